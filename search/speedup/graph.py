"""Channel graph: every axis of every tensor (and of every parameter) as a row of positions.

Operators *link* positions that must be removed together (a conv's output channel ``i``, the
BN channel ``i`` after it, the ReLU channel ``i``, the next conv's input channel ``i``...). Linked
positions form *components*; a component is removed as a whole, or not at all.

Two facts per value position decide removal:

* ``zero``: the slice at this position is identically zero in the masked model (forward pass);
* ``ignored``: the slice does not influence the model's outputs (backward pass): every consumer
  multiplies it by zero weights, or feeds it only to ignored positions.

A component is removable when no position in it is *pinned* (a model input/output, an operator
whose channel semantics we do not know, a normalisation over that axis, a literal size in a
reshape...) and every value position in it is zero or ignored. Removing such a component
changes no output: that is what makes the compact model exact.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

__all__ = ["Value", "ChannelGraph", "carry"]


def carry(out: Value, b: int, x: Value, a: int, positions: np.ndarray | None = None) -> None:
    """``out``'s slices on axis ``b`` are ``x``'s slices on axis ``a`` (at ``positions``)."""
    if positions is None:
        out.zero[b] = x.zero[a].copy()
        out.const[b] = x.const[a].copy()
    else:
        out.zero[b] = x.zero[a][positions]
        out.const[b] = x.const[a][positions]


#: templates to copy new fact arrays from (a slice copy costs less than np.full / np.ones per array)
_NANS = np.full(4096, np.nan)
_TRUES = np.ones(4096, dtype=bool)


def _filled(template: np.ndarray, n: int) -> np.ndarray:
    return template[:n].copy() if n <= template.size else np.full(n, template[0])


class Value:
    """A tensor in the graph (or a parameter / buffer) with one position row per axis.

    Per axis it carries three facts (NumPy arrays over the axis' positions): ``zero``, ``ignored``
    (see the module docstring) and ``const``, the constant value of each slice where known (NaN:
    unknown; zero slices are 0). They are allocated on first use: most parameters never need them.
    """

    __slots__ = ("key", "shape", "offsets", "is_param", "consumed", "producer", "_zero", "_ignored", "_const")

    def __init__(self, key: str, shape: tuple[int, ...], offsets: list[int], is_param: bool = False,
                 producer: str = "") -> None:
        self.key = key
        self.shape = shape
        self.offsets = offsets
        self.is_param = is_param
        self.consumed = False
        self.producer = producer
        self._zero: list[np.ndarray] | None = None
        self._ignored: list[np.ndarray] | None = None
        self._const: list[np.ndarray] | None = None

    def __repr__(self) -> str:
        return f"Value({self.key!r}, shape={self.shape})"

    @property
    def zero(self) -> list[np.ndarray]:
        if self._zero is None:
            self._zero = [np.zeros(n, dtype=bool) for n in self.shape]
        return self._zero

    @property
    def ignored(self) -> list[np.ndarray]:
        """Ignored until a consumer says otherwise; model outputs are marked used explicitly."""
        if self._ignored is None:
            self._ignored = [_filled(_TRUES, n) for n in self.shape]
        return self._ignored

    @property
    def const(self) -> list[np.ndarray]:
        if self._const is None:
            self._const = [_filled(_NANS, n) for n in self.shape]
        return self._const

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def constants(self, axis: int) -> np.ndarray:
        """Known constant of each slice on ``axis`` (0 where zero, NaN where unknown)."""
        return np.where(self.zero[axis], 0.0, self.const[axis])

    def ids(self, axis: int) -> np.ndarray:
        return np.arange(self.offsets[axis], self.offsets[axis] + self.shape[axis])


class ChannelGraph:
    """Positions, links between them, pins, and the zero/ignored facts of values."""

    def __init__(self) -> None:
        self.size = 0
        #: one-to-one links between whole axes: (start of a's axis, start of b's axis, length)
        self._block_links: list[tuple[int, int, int]] = []
        #: other links, position by position
        self._links_a: list[np.ndarray] = []
        self._links_b: list[np.ndarray] = []
        self.pinned: dict[int, str] = {}
        self._pin_chunks: list[tuple[np.ndarray, str]] = []
        self.values: list[Value] = []

    # -- construction -----------------------------------------------------------------------------
    def new_value(self, key: str, shape: Sequence[int], *, is_param: bool = False, producer: str = "") -> Value:
        offsets = []
        for n in shape:
            offsets.append(self.size)
            self.size += int(n)
        value = Value(key, tuple(int(n) for n in shape), offsets, is_param, producer)
        self.values.append(value)
        return value

    def link(self, a: Value, axis_a: int, b: Value, axis_b: int, mapping: np.ndarray | None = None) -> None:
        """Link ``b``'s positions on ``axis_b`` with ``a``'s on ``axis_a``.

        ``mapping[j]`` is the position of ``a`` that ``b``'s position ``j`` belongs to; ``None``
        means one-to-one (the sizes must match).
        """
        n = b.shape[axis_b]
        if mapping is None:
            if a.shape[axis_a] != n:
                raise ValueError(f"cannot link {a.key}[{axis_a}] ({a.shape[axis_a]}) with {b.key}[{axis_b}] ({n})")
            self._block_links.append((a.offsets[axis_a], b.offsets[axis_b], n))
            return
        mapping = np.asarray(mapping, dtype=np.int64)
        if a.shape[axis_a] == n and np.array_equal(mapping, np.arange(n)):
            self._block_links.append((a.offsets[axis_a], b.offsets[axis_b], n))
            return
        self._links_a.append(a.offsets[axis_a] + mapping)
        self._links_b.append(b.ids(axis_b))

    def pin(self, value: Value, axis: int, reason: str, positions: np.ndarray | None = None) -> None:
        ids = value.ids(axis) if positions is None else value.offsets[axis] + np.asarray(positions, dtype=np.int64)
        self._pin_chunks.append((ids, reason))

    def pin_all(self, value: Value, reason: str) -> None:
        for axis in range(value.ndim):
            self.pin(value, axis, reason)

    # -- analysis ---------------------------------------------------------------------------------
    def components(self) -> tuple[int, np.ndarray]:
        """(number of labels, component label of every position); some labels may name no position.

        Most links join two whole axes one to one (a conv's output channels and the BN's after
        it...). Those are merged first at the level of axes: each class of axes joined that way
        is one row of positions, represented by one of its axes (union-find over a few hundred
        axes instead of a graph over every position). The remaining, position-level links are
        then translated onto the representatives and resolved by a sparse connected-components
        pass.
        """
        length: dict[int, int] = {}
        links = [(a, b, n) for a, b, n in self._block_links if n > 0]  # an empty axis starts where the next one does
        for a, b, n in links:
            length[a] = length[b] = n
        parent = {start: start for start in length}

        def root(x: int) -> int:
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        for a, b, _ in links:
            ra, rb = root(a), root(b)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
        canon = np.arange(self.size, dtype=np.int64)  # each position's representative position
        for start, n in length.items():
            r = root(start)
            if r != start:
                canon[start : start + n] = canon[r : r + n]  # the root is the class's smallest start: unmoved
        if self._links_a:
            a = canon[np.concatenate(self._links_a)]
            b = canon[np.concatenate(self._links_b)]
        else:
            a = b = np.zeros(0, dtype=np.int64)
        matrix = coo_matrix((np.ones(a.size, dtype=np.int8), (a, b)), shape=(self.size, self.size))
        n_labels, labels = connected_components(matrix, directed=False)
        # positions folded onto a representative take its label; their own labels stay unused,
        # so some of the n_labels labels name no position (callers index arrays of n_labels)
        return n_labels, labels[canon]

    def pin_reasons(self) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """(pinned bool array, index of each position's first pin reason or -1, reasons)."""
        first = np.full(self.size, -1, dtype=np.int64)
        reasons: list[str] = []
        for k, (ids, reason) in enumerate(self._pin_chunks):
            reasons.append(reason)
            fresh = ids[first[ids] == -1]
            first[fresh] = k
        return first >= 0, first, reasons

    def dead_array(self) -> tuple[np.ndarray, np.ndarray]:
        """(is_value_position, dead) over all positions; dead = zero or ignored."""
        is_value = np.zeros(self.size, dtype=bool)
        dead = np.ones(self.size, dtype=bool)
        for v in self.values:
            if v.is_param:
                continue
            for axis, start in enumerate(v.offsets):
                end = start + v.shape[axis]
                is_value[start:end] = True
                np.logical_or(v.zero[axis], v.ignored[axis], out=dead[start:end])
        return is_value, dead

    def axis_blocks(self) -> tuple[np.ndarray, np.ndarray]:
        """(start, length) of every value's every axis, in position order (they tile ``0..size``)."""
        starts = [start for v in self.values for start in v.offsets]
        lengths = [n for v in self.values for n in v.shape]
        return np.asarray(starts, dtype=np.int64), np.asarray(lengths, dtype=np.int64)
