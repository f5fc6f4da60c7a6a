"""Trials version (for caching trial pages) and the generator journal on trial rows.

* ``experiments.trials_version``: bumped by a database trigger on every insert, update or delete
  of one of the experiment's trials, whoever writes (the runner, the store, bulk Core inserts), so
  a cached page of trials keyed on it can never be served after a trial changed (see
  ``service.api.trials``). PostgreSQL: statement-level triggers with transition tables (one bump
  per statement and experiment); SQLite: row-level triggers.
* ``trials.ask_seq`` / ``trials.tell_seq`` / ``trials.told``: where the trial's task was handed out
  and its result told in the sequence of the TaskGenerator's calls, and the exact result it was
  told. The runner checkpoints ``experiments.generator_state`` only now and then; a resumed runner
  replays the calls after the checkpoint from these columns (``service.runner_experiment``).

Self-contained on purpose (no import of ``service.models``), like ``0001``.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_EVENTS = ("insert", "update", "delete")

_PG_FUNCTION = """
CREATE FUNCTION trials_bump_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        UPDATE experiments SET trials_version = trials_version + 1
        WHERE id IN (SELECT DISTINCT experiment_id FROM old_rows);
    ELSE
        UPDATE experiments SET trials_version = trials_version + 1
        WHERE id IN (SELECT DISTINCT experiment_id FROM new_rows);
    END IF;
    RETURN NULL;
END
$$
"""


def _json() -> sa.types.TypeEngine:
    return sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")


def _create_triggers() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_PG_FUNCTION)
        for event in _EVENTS:
            table = "OLD TABLE AS old_rows" if event == "delete" else "NEW TABLE AS new_rows"
            op.execute(f"CREATE TRIGGER trials_version_{event} AFTER {event.upper()} ON trials "
                       f"REFERENCING {table} FOR EACH STATEMENT EXECUTE FUNCTION trials_bump_version()")
        return
    for event in _EVENTS:
        row = "OLD" if event == "delete" else "NEW"
        op.execute(f"CREATE TRIGGER trials_version_{event} AFTER {event.upper()} ON trials BEGIN "
                   f"UPDATE experiments SET trials_version = trials_version + 1 WHERE id = {row}.experiment_id; END")


def upgrade() -> None:
    op.add_column("experiments", sa.Column("trials_version", sa.Integer(), nullable=False, server_default="0"))
    op.add_column("trials", sa.Column("ask_seq", sa.Integer(), nullable=True))
    op.add_column("trials", sa.Column("tell_seq", sa.Integer(), nullable=True))
    op.add_column("trials", sa.Column("told", _json(), nullable=True))
    _create_triggers()


def downgrade() -> None:
    for event in _EVENTS:
        op.execute(f"DROP TRIGGER IF EXISTS trials_version_{event}" +
                   (" ON trials" if op.get_bind().dialect.name == "postgresql" else ""))
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS trials_bump_version()")
    with op.batch_alter_table("trials") as batch:
        for column in ("told", "tell_seq", "ask_seq"):
            batch.drop_column(column)
    with op.batch_alter_table("experiments") as batch:
        batch.drop_column("trials_version")
