"""A small Transformer encoder classifier built from explicit modules.

Attention is written out with separate ``q_proj``/``k_proj``/``v_proj``/``out_proj``
``nn.Linear`` layers (no ``nn.MultiheadAttention``, whose fused fast path does not
trace), so every block is visible to ``torch.fx`` and to pruners. Shapes are taken
from ``x.size(i)`` and reshapes use ``-1`` for the head dimension, so the graph
keeps working after q/k/v output features are pruned.

Example:
    >>> model = transformer_classifier(num_classes=3, vocab_size=50)
    >>> model(torch.randint(0, 50, (2, 16))).shape
    torch.Size([2, 3])
"""

from __future__ import annotations

import torch
from torch import nn

from .registry import check_positive_int


class SelfAttention(nn.Module):
    """Multi-head scaled dot-product self-attention.

    Args:
        d_model: Embedding width.
        nhead: Number of heads; must divide ``d_model``.
        dropout: Dropout on the attention weights.

    Example:
        >>> SelfAttention(32, 4)(torch.randn(2, 5, 32)).shape
        torch.Size([2, 5, 32])
    """

    def __init__(self, d_model: int, nhead: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.num_heads = nhead
        self.scale = float((d_model // nhead) ** -0.5)
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.attn_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t = x.size(0), x.size(1)
        q = self.q_proj(x).view(b, t, self.num_heads, -1).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.num_heads, -1).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.num_heads, -1).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(-2, -1)) * self.scale
        weights = self.attn_dropout(torch.softmax(scores, dim=-1))
        out = torch.matmul(weights, v).transpose(1, 2).reshape(b, t, -1)
        return self.out_proj(out)


class FeedForward(nn.Module):
    """Position-wise ``Linear -> GELU -> Linear``.

    Example:
        >>> FeedForward(16, 32)(torch.randn(1, 3, 16)).shape
        torch.Size([1, 3, 16])
    """

    def __init__(self, d_model: int, dim_feedforward: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_model, dim_feedforward)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(dim_feedforward, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc2(self.act(self.fc1(x))))


class EncoderBlock(nn.Module):
    """Pre-norm encoder block: ``x + attn(norm1(x))`` then ``x + ffn(norm2(x))``.

    Example:
        >>> EncoderBlock(16, 2, 32)(torch.randn(1, 4, 16)).shape
        torch.Size([1, 4, 16])
    """

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = SelfAttention(d_model, nhead, dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.ffn = FeedForward(d_model, dim_feedforward, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout1(self.attn(self.norm1(x)))
        return x + self.ffn(self.norm2(x))


class TransformerClassifier(nn.Module):
    """Token embedding + learned positions, encoder blocks, mean-pool, linear head.

    Input is a LongTensor of token ids ``[batch, seq_len]`` with ``seq_len <= max_len``.

    Example:
        >>> TransformerClassifier(num_classes=2, vocab_size=20, d_model=16, nhead=2)(
        ...     torch.zeros(1, 8, dtype=torch.long)).shape
        torch.Size([1, 2])
    """

    def __init__(
        self,
        num_classes: int = 10,
        vocab_size: int = 1000,
        d_model: int = 64,
        nhead: int = 4,
        num_layers: int = 2,
        dim_feedforward: int = 128,
        max_len: int = 64,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        for name, value in (
            ("num_classes", num_classes),
            ("vocab_size", vocab_size),
            ("d_model", d_model),
            ("nhead", nhead),
            ("num_layers", num_layers),
            ("dim_feedforward", dim_feedforward),
            ("max_len", max_len),
        ):
            check_positive_int(name, value)
        if d_model % nhead:
            raise ValueError(f"d_model ({d_model}) must be divisible by nhead ({nhead})")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.max_len = max_len
        self.embed = nn.Embedding(vocab_size, d_model)
        self.pos_embed = nn.Embedding(max_len, d_model)
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(
            EncoderBlock(d_model, nhead, dim_feedforward, dropout) for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, 0, 0.02)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.size(1), device=ids.device)
        x = self.embed(ids) + self.pos_embed(positions).unsqueeze(0)
        x = self.dropout(x)
        for layer in self.layers:
            x = layer(x)
        x = self.norm(x).mean(dim=1)
        return self.head(x)


def transformer_classifier(
    num_classes: int = 10,
    vocab_size: int = 1000,
    d_model: int = 64,
    nhead: int = 4,
    num_layers: int = 2,
    dim_feedforward: int = 128,
    max_len: int = 64,
    dropout: float = 0.0,
) -> TransformerClassifier:
    """Small Transformer encoder classifier over token ids ``[batch, seq_len]``.

    Args:
        num_classes: Output classes.
        vocab_size: Token vocabulary size.
        d_model: Embedding width.
        nhead: Attention heads (must divide ``d_model``).
        num_layers: Encoder blocks.
        dim_feedforward: Hidden width of each feed-forward block.
        max_len: Longest supported sequence.
        dropout: Dropout probability (0 keeps training fully deterministic).

    Example:
        >>> transformer_classifier(num_classes=4).head
        Linear(in_features=64, out_features=4, bias=True)
    """
    return TransformerClassifier(
        num_classes, vocab_size, d_model, nhead, num_layers, dim_feedforward, max_len, dropout
    )
