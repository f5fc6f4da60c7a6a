"""Initial schema: experiments, trials, events, artifacts, api_tokens, uploaded_models.

Self-contained on purpose (plain SQLAlchemy types, no import of ``service.models``), so later model
changes cannot silently change what this revision creates.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_EXPERIMENT_LEVEL = -(2**31)  # trial_number NULL in the artifacts unique index


def _json() -> sa.types.TypeEngine:
    return sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")


def _ts(name: str, nullable: bool = True) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        _ts("created_at", nullable=False),
        _ts("last_used_at"),
        _ts("revoked_at"),
        sa.UniqueConstraint("hash"),
    )
    op.create_index("ix_api_tokens_prefix", "api_tokens", ["prefix"])

    op.create_table(
        "experiments",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("spec", _json(), nullable=False),
        sa.Column("spec_version", sa.Integer(), nullable=False),
        sa.Column("algorithm", sa.String(64), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        _ts("created_at", nullable=False),
        _ts("updated_at", nullable=False),
        _ts("started_at"),
        _ts("finished_at"),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("best_trial_number", sa.Integer(), nullable=True),
        sa.Column("best_score", sa.Float(), nullable=True),
        sa.Column("best_flops_ratio", sa.Float(), nullable=True),
        sa.Column("n_trials", sa.Integer(), nullable=False),
        sa.Column("max_trials", sa.Integer(), nullable=True),
        sa.Column("generator_state", _json(), nullable=True),
        sa.Column("lease_owner", sa.String(200), nullable=True),
        _ts("lease_expires_at"),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column(
            "owner_token_id", sa.Integer(), sa.ForeignKey("api_tokens.id", ondelete="SET NULL"), nullable=True
        ),
    )
    op.create_index("ix_experiments_state_id", "experiments", ["state", "id"])
    op.create_index("ix_experiments_created_at_id", "experiments", ["created_at", "id"])
    op.create_index("ix_experiments_name_id", "experiments", ["name", "id"])
    op.create_index("ix_experiments_best_score_id", "experiments", ["best_score", "id"])
    op.create_index("ix_experiments_lease_expires_at", "experiments", ["lease_expires_at"])

    op.create_table(
        "trials",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "experiment_id", sa.Integer(), sa.ForeignKey("experiments.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("parent_number", sa.Integer(), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("params", _json(), nullable=False),
        sa.Column("config_list", _json(), nullable=True),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("flops_ratio", sa.Float(), nullable=True),
        sa.Column("metrics", _json(), nullable=False),
        sa.Column("requested_sparsity", _json(), nullable=True),
        sa.Column("achieved_sparsity", _json(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("worker", sa.String(200), nullable=True),
        _ts("created_at", nullable=False),
        _ts("started_at"),
        _ts("finished_at"),
        sa.Column("duration_s", sa.Float(), nullable=True),
        sa.UniqueConstraint("experiment_id", "number", name="uq_trials_experiment_id_number"),
    )
    op.create_index("ix_trials_experiment_id_state", "trials", ["experiment_id", "state"])
    op.create_index("ix_trials_experiment_id_score_id", "trials", ["experiment_id", "score", "id"])
    op.create_index("ix_trials_experiment_id_flops_ratio_id", "trials", ["experiment_id", "flops_ratio", "id"])
    op.create_index("ix_trials_experiment_id_duration_s_id", "trials", ["experiment_id", "duration_s", "id"])

    op.create_table(
        "events",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "experiment_id", sa.Integer(), sa.ForeignKey("experiments.id", ondelete="CASCADE"), nullable=False
        ),
        _ts("created_at", nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("data", _json(), nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_events_experiment_id_id", "events", ["experiment_id", "id"])

    op.create_table(
        "artifacts",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "experiment_id", sa.Integer(), sa.ForeignKey("experiments.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("trial_number", sa.Integer(), nullable=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("path", sa.String(1024), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("content_type", sa.String(128), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=True),
        _ts("created_at", nullable=False),
    )
    op.create_index(
        "uq_artifacts_experiment_trial_kind",
        "artifacts",
        ["experiment_id", sa.text(f"coalesce(trial_number, {_EXPERIMENT_LEVEL})"), "kind"],
        unique=True,
    )

    op.create_table(
        "uploaded_models",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("factory", sa.String(200), nullable=False),
        sa.Column("kwargs", _json(), nullable=False),
        sa.Column("path", sa.String(1024), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        _ts("created_at", nullable=False),
    )


def downgrade() -> None:
    for table in ("uploaded_models", "artifacts", "events", "trials", "experiments", "api_tokens"):
        op.drop_table(table)
