"""The reading task's state machine: UPS states and transitions (PS3.4 Annex CC), pure.

A reading task is a Unified Procedure Step: SCHEDULED → IN PROGRESS (a reader claims it and
holds its Transaction UID, PS3.4 CC.1.1) → COMPLETED, or CANCELED. :data:`TRANSITIONS` is
PS3.4 Table CC.1.1-2 with one row per telerad action; :func:`transition` looks the action up
and checks the Transaction UID the way the table's "with/without correct transaction UID" rows
do.

Actions and their UPS counterparts:

============== ======================================================================
CLAIM          N-ACTION Change State to IN PROGRESS with a new Transaction UID
COMPLETE       Change State to COMPLETED with the holder's Transaction UID
CANCEL         Change State to CANCELED with the holder's Transaction UID
REQUEST_CANCEL N-ACTION Request Cancel by an administrator; telerad cancels at once, also
               an IN PROGRESS task (the SCP is the owner of every reading task)
RELEASE        **telerad extension**: the holder gives the task back, IN PROGRESS → SCHEDULED
EXPIRE         **telerad extension**: the lease ran out, IN PROGRESS → SCHEDULED
BREAK_LOCK     **telerad extension**: an administrator takes the claim away, → SCHEDULED
============== ======================================================================

UPS has no way back to SCHEDULED (Table CC.1.1-2 answers 0xC303); reading work needs one, so a
reader who falls ill or leaves a task does not block it forever. The old Transaction UID is
void afterwards: the next claim needs a new one.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from telerad.worklist.errors import (
    InvalidTransition,
    TaskAlreadyClaimed,
    TaskFinal,
    TaskNotInProgress,
    TransactionUIDError,
)


class ProcedureStepState(enum.StrEnum):
    """Procedure Step State (0074,1000), PS3.4 Table CC.1.1-1."""

    SCHEDULED = "SCHEDULED"
    IN_PROGRESS = "IN PROGRESS"
    COMPLETED = "COMPLETED"
    CANCELED = "CANCELED"


class TaskAction(enum.StrEnum):
    """What may happen to a task (see the module docstring)."""

    CLAIM = "claim"
    COMPLETE = "complete"
    CANCEL = "cancel"
    REQUEST_CANCEL = "request-cancel"
    RELEASE = "release"
    EXPIRE = "expire"
    BREAK_LOCK = "break-lock"


S = ProcedureStepState
A = TaskAction
OPEN_STATES = frozenset({S.SCHEDULED, S.IN_PROGRESS})
FINAL_STATES = frozenset({S.COMPLETED, S.CANCELED})

#: (state, action) → new state. Pairs not listed are refused (see :func:`refusal`).
TRANSITIONS: dict[tuple[S, A], S] = {
    (S.SCHEDULED, A.CLAIM): S.IN_PROGRESS,
    (S.SCHEDULED, A.REQUEST_CANCEL): S.CANCELED,
    (S.IN_PROGRESS, A.COMPLETE): S.COMPLETED,
    (S.IN_PROGRESS, A.CANCEL): S.CANCELED,
    (S.IN_PROGRESS, A.REQUEST_CANCEL): S.CANCELED,
    (S.IN_PROGRESS, A.RELEASE): S.SCHEDULED,
    (S.IN_PROGRESS, A.EXPIRE): S.SCHEDULED,
    (S.IN_PROGRESS, A.BREAK_LOCK): S.SCHEDULED,
}
#: Actions that must present the holder's Transaction UID (Table CC.1.1-2 "with correct
#: transaction UID"); RELEASE checks it when one is given.
NEEDS_TRANSACTION_UID = frozenset({A.COMPLETE, A.CANCEL})


@dataclass(frozen=True, slots=True)
class Transition:
    """An allowed change of state."""

    action: TaskAction
    old: ProcedureStepState
    new: ProcedureStepState


def transition(
    state: ProcedureStepState | str,
    action: TaskAction,
    *,
    held_uid: str | None = None,
    given_uid: str | None = None,
    task: str = "the task",
) -> Transition:
    """Check ``action`` on a task in ``state`` and return the change it makes.

    Parameters
    ----------
    state
        The task's Procedure Step State.
    action
        What is asked.
    held_uid
        The Transaction UID recorded at the claim (IN PROGRESS only).
    given_uid
        The Transaction UID the caller presents: required for COMPLETE and CANCEL, checked for
        RELEASE when given, and for CLAIM it must be new (UPS-RS: the user agent makes it).
    task
        How to name the task in error messages.

    Raises
    ------
    TaskAlreadyClaimed, TaskNotInProgress, TaskFinal, TransactionUIDError, InvalidTransition
    """
    state = ProcedureStepState(state)
    new = TRANSITIONS.get((state, action))
    if new is None:
        raise refusal(state, action, task)
    if state is S.IN_PROGRESS and (action in NEEDS_TRANSACTION_UID or given_uid):
        _check_uid(action, held_uid, given_uid, task)
    return Transition(action, state, new)


def refusal(state: ProcedureStepState, action: TaskAction, task: str) -> InvalidTransition:
    """The precise error for an action the table does not allow in ``state``."""
    if state in FINAL_STATES:
        return TaskFinal(f"{task} is {state} and may no longer be changed ({action})", state)
    if state is S.IN_PROGRESS:  # only CLAIM is missing from the IN PROGRESS rows
        return TaskAlreadyClaimed(f"{task} is already IN PROGRESS (claimed)", state)
    return TaskNotInProgress(f"{task} is SCHEDULED: {action} needs it claimed first", state)


def _check_uid(action: TaskAction, held: str | None, given: str | None, task: str) -> None:
    if not given:
        raise TransactionUIDError(
            f"{action} of {task} needs its Transaction UID", S.IN_PROGRESS, missing=True
        )
    if given != held:
        raise TransactionUIDError(
            f"the Transaction UID is incorrect for {task}", S.IN_PROGRESS, missing=False
        )
