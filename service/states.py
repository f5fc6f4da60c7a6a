"""Experiment and trial states with their legal transitions.

States are stored as their string value. Every state change goes through ``can_go`` (the store
functions call :func:`check_transition`), so an illegal move raises :class:`IllegalTransition`
naming both ends instead of silently corrupting an experiment's history.

Example:
    >>> ExperimentState.QUEUED.can_go(ExperimentState.RUNNING)
    True
    >>> ExperimentState.SUCCEEDED.is_terminal()
    True
    >>> check_transition(TrialState.SUCCEEDED, TrialState.RUNNING)
    Traceback (most recent call last):
    ...
    service.states.IllegalTransition: trial state: illegal transition succeeded -> running
"""

from __future__ import annotations

import enum

__all__ = ["COUNTED_TRIAL_STATES", "ExperimentState", "IllegalTransition", "TrialState", "check_transition"]


class IllegalTransition(ValueError):
    """A state change that the state machine does not allow.

    Attributes:
        from_state: the current state.
        to_state: the requested state.

    Example:
        >>> err = IllegalTransition(ExperimentState.SUCCEEDED, ExperimentState.RUNNING)
        >>> str(err)
        'experiment state: illegal transition succeeded -> running'
    """

    def __init__(self, from_state: ExperimentState | TrialState, to_state: ExperimentState | TrialState):
        self.from_state = from_state
        self.to_state = to_state
        kind = "experiment" if isinstance(from_state, ExperimentState) else "trial"
        super().__init__(f"{kind} state: illegal transition {from_state.value} -> {to_state.value}")


class ExperimentState(str, enum.Enum):
    """Lifecycle of an experiment.

    ``queued -> running -> succeeded | failed | cancelled``; ``running -> cancelling -> cancelled``;
    ``queued -> cancelled``; resume: ``cancelled | failed -> queued``. A crashed server's ``running``
    experiment keeps its state; its lease expires and another runner takes it over.

    Example:
        >>> ExperimentState("running").can_go(ExperimentState.CANCELLING)
        True
        >>> sorted(s.value for s in ExperimentState if s.is_terminal())
        ['cancelled', 'failed', 'succeeded']
    """

    QUEUED = "queued"
    RUNNING = "running"
    CANCELLING = "cancelling"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def is_terminal(self) -> bool:
        """True for succeeded, failed and cancelled (nothing runs any more)."""
        return self in _EXP_TERMINAL

    def can_go(self, to: ExperimentState) -> bool:
        """True if moving from this state to ``to`` is legal."""
        return to in _EXP_TRANSITIONS[self]


class TrialState(str, enum.Enum):
    """Lifecycle of a trial.

    ``pending -> running -> succeeded | failed | cancelled``; ``running -> pending`` (retry after a
    lost worker; the caller bumps ``attempt``); ``pending -> cancelled | failed`` (cancelled, or could
    not start, before it ran).

    ``discarded``: the algorithm handed the task out ahead of a decision that then went the other
    way (NetAdapt running ahead, see ``TaskGenerator.discard``); it is not a trial of the search and
    never runs again. Reached from ``pending``/``running`` (cancelled in flight), from
    ``succeeded``/``failed`` (it finished while still tentative) and from ``cancelled`` (cancelled
    with its experiment, discarded after the resume before it ran again).

    Example:
        >>> TrialState.RUNNING.can_go(TrialState.PENDING)
        True
        >>> TrialState.FAILED.is_terminal()
        True
        >>> TrialState.SUCCEEDED.can_go(TrialState.DISCARDED), TrialState.DISCARDED.can_go(TrialState.RUNNING)
        (True, False)
    """

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    DISCARDED = "discarded"

    def is_terminal(self) -> bool:
        """True for succeeded, failed, cancelled and discarded."""
        return self in _TRIAL_TERMINAL

    def can_go(self, to: TrialState) -> bool:
        """True if moving from this state to ``to`` is legal."""
        return to in _TRIAL_TRANSITIONS[self]


_EXP_TERMINAL = frozenset({ExperimentState.SUCCEEDED, ExperimentState.FAILED, ExperimentState.CANCELLED})
_EXP_TRANSITIONS: dict[ExperimentState, frozenset[ExperimentState]] = {
    ExperimentState.QUEUED: frozenset({ExperimentState.RUNNING, ExperimentState.CANCELLED}),
    ExperimentState.RUNNING: frozenset(
        {
            ExperimentState.SUCCEEDED,
            ExperimentState.FAILED,
            ExperimentState.CANCELLED,
            ExperimentState.CANCELLING,
        }
    ),
    # a cancelling experiment may still fail while being torn down
    ExperimentState.CANCELLING: frozenset({ExperimentState.CANCELLED, ExperimentState.FAILED}),
    ExperimentState.SUCCEEDED: frozenset(),
    ExperimentState.FAILED: frozenset({ExperimentState.QUEUED}),
    ExperimentState.CANCELLED: frozenset({ExperimentState.QUEUED}),
}
_TRIAL_TERMINAL = frozenset({TrialState.SUCCEEDED, TrialState.FAILED, TrialState.CANCELLED, TrialState.DISCARDED})
#: trial states counted in ``experiments.n_trials`` (a row leaving them, e.g. for ``discarded``, stops counting)
COUNTED_TRIAL_STATES = frozenset({TrialState.SUCCEEDED, TrialState.FAILED})
_TRIAL_TRANSITIONS: dict[TrialState, frozenset[TrialState]] = {
    # pending -> failed: a task that could not even start (e.g. its parent trial failed)
    TrialState.PENDING: frozenset({TrialState.RUNNING, TrialState.CANCELLED, TrialState.FAILED, TrialState.DISCARDED}),
    TrialState.RUNNING: frozenset(
        {TrialState.SUCCEEDED, TrialState.FAILED, TrialState.CANCELLED, TrialState.PENDING, TrialState.DISCARDED}
    ),
    # a result told while the task was tentative; the algorithm discards it when the decision goes the other way
    TrialState.SUCCEEDED: frozenset({TrialState.DISCARDED}),
    TrialState.FAILED: frozenset({TrialState.DISCARDED}),
    TrialState.CANCELLED: frozenset({TrialState.DISCARDED}),
    TrialState.DISCARDED: frozenset(),
}


def check_transition(
    from_state: ExperimentState | TrialState, to_state: ExperimentState | TrialState
) -> None:
    """Raise :class:`IllegalTransition` unless ``from_state -> to_state`` is legal.

    Staying in the same state is not a transition and is always allowed (idempotent writes).
    """
    if from_state == to_state:
        return
    if type(from_state) is not type(to_state) or not from_state.can_go(to_state):  # type: ignore[arg-type]
        raise IllegalTransition(from_state, to_state)
