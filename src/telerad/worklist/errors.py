"""Exceptions raised by the reading worklist.

The tree::

    WorklistError
    ├── TaskNotFound            no such task, or one the caller may not see (the same to callers)
    ├── TaskPermissionDenied    the caller sees the task but his role may not do this
    ├── InvalidWorklistInput    a malformed order, rule, pool, profile or filter
    ├── InvalidAssignment       the chosen reader may not read this task (site, role, state)
    └── InvalidTransition       PS3.4 Table CC.1.1-2 refuses the change of state
        ├── TaskAlreadyClaimed      IN PROGRESS already (UPS 0xC302)
        ├── TaskNotInProgress       SCHEDULED: complete/cancel/release need a claim (0xC310)
        ├── TaskFinal               COMPLETED or CANCELED: no further change (0xC300)
        ├── TaskNotHolder           IN PROGRESS, held by another reader (0xC302)
        ├── NoWayBack               UPS Change State to SCHEDULED (0xC303)
        └── TransactionUIDError     the Transaction UID is missing or incorrect (0xC301)

Every :class:`InvalidTransition` carries the UPS failure status (``ups_status``) of PS3.4
Table CC.1.1-2 and the task's state, so the adapters can answer precisely (HTTP 409, or 400 with
the Warning header PS3.18 §11.7.3.2 names for the Transaction UID).
"""

from __future__ import annotations


class WorklistError(Exception):
    """Base class of every error raised by :mod:`telerad.worklist`'s tasks."""


class TaskNotFound(WorklistError):
    """No such task, or one outside the caller's worklist."""


class TaskPermissionDenied(WorklistError):
    """The caller may see the task but not do this to it."""


class InvalidWorklistInput(WorklistError, ValueError):
    """A value the worklist cannot accept (priority, UID, working hours, rule, filter…)."""


class InvalidAssignment(WorklistError):
    """The reader chosen for a task may not read it."""


class InvalidTransition(WorklistError):
    """A change of state the UPS state machine refuses."""

    ups_status = 0xC300

    def __init__(self, message: str, state: str) -> None:
        super().__init__(message)
        self.state = state


class TaskAlreadyClaimed(InvalidTransition):
    """The task is IN PROGRESS already (UPS 0xC302)."""

    ups_status = 0xC302


class TaskNotInProgress(InvalidTransition):
    """The task is SCHEDULED; this change needs it IN PROGRESS (UPS 0xC310)."""

    ups_status = 0xC310


class TaskFinal(InvalidTransition):
    """The task is COMPLETED or CANCELED and may no longer be changed (UPS 0xC300)."""

    ups_status = 0xC300


class TaskNotHolder(InvalidTransition):
    """The task is IN PROGRESS, held by another reader."""

    ups_status = 0xC302


class TransactionUIDError(InvalidTransition):
    """The Transaction UID (0008,1195) is missing or does not match the holder's (0xC301)."""

    ups_status = 0xC301

    def __init__(self, message: str, state: str, *, missing: bool) -> None:
        super().__init__(message, state)
        self.missing = missing


class NoWayBack(InvalidTransition):
    """UPS Change State to SCHEDULED is refused (0xC303); telerad's release is not UPS."""

    ups_status = 0xC303
