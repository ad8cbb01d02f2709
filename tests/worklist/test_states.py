"""The UPS state machine, table-driven against PS3.4 Table CC.1.1-2 (plain values, no database)."""

from __future__ import annotations

import itertools

import pytest

from telerad.worklist import (
    InvalidTransition,
    ProcedureStepState,
    TaskAction,
    TaskAlreadyClaimed,
    TaskFinal,
    TaskNotInProgress,
    TransactionUIDError,
    transition,
)

S, A = ProcedureStepState, TaskAction
HELD = "1.2.3.4"

#: Every (state, action) pair: the new state, or the error class and its UPS status.
EXPECTED: dict[tuple[S, A], S | tuple[type[InvalidTransition], int]] = {
    (S.SCHEDULED, A.CLAIM): S.IN_PROGRESS,
    (S.SCHEDULED, A.COMPLETE): (TaskNotInProgress, 0xC310),
    (S.SCHEDULED, A.CANCEL): (TaskNotInProgress, 0xC310),
    (S.SCHEDULED, A.REQUEST_CANCEL): S.CANCELED,
    (S.SCHEDULED, A.RELEASE): (TaskNotInProgress, 0xC310),
    (S.SCHEDULED, A.EXPIRE): (TaskNotInProgress, 0xC310),
    (S.SCHEDULED, A.BREAK_LOCK): (TaskNotInProgress, 0xC310),
    (S.IN_PROGRESS, A.CLAIM): (TaskAlreadyClaimed, 0xC302),
    (S.IN_PROGRESS, A.COMPLETE): S.COMPLETED,
    (S.IN_PROGRESS, A.CANCEL): S.CANCELED,
    (S.IN_PROGRESS, A.REQUEST_CANCEL): S.CANCELED,
    (S.IN_PROGRESS, A.RELEASE): S.SCHEDULED,
    (S.IN_PROGRESS, A.EXPIRE): S.SCHEDULED,
    (S.IN_PROGRESS, A.BREAK_LOCK): S.SCHEDULED,
    **{(final, action): (TaskFinal, 0xC300) for final in (S.COMPLETED, S.CANCELED) for action in A},
}


def test_the_table_covers_every_state_and_action() -> None:
    assert set(EXPECTED) == set(itertools.product(S, A))


@pytest.mark.parametrize(("state", "action"), sorted(EXPECTED, key=str))
def test_transition(state: S, action: A) -> None:
    expected = EXPECTED[(state, action)]
    if isinstance(expected, S):
        result = transition(state, action, held_uid=HELD, given_uid=HELD)
        assert (result.old, result.new) == (state, expected)
        return
    error, status = expected
    with pytest.raises(error) as caught:
        transition(state, action, held_uid=HELD, given_uid=HELD, task="task 7")
    assert caught.value.ups_status == status
    assert caught.value.state == state
    assert "task 7" in str(caught.value) and state.value in str(caught.value)


@pytest.mark.parametrize("action", [A.COMPLETE, A.CANCEL])
@pytest.mark.parametrize(
    ("given", "missing", "message"),
    [(None, True, "needs its Transaction UID"), ("", True, "needs"), ("9.9", False, "incorrect")],
)
def test_completion_and_cancel_need_the_holders_transaction_uid(
    action: A, given: str | None, missing: bool, message: str
) -> None:
    with pytest.raises(TransactionUIDError, match=message) as caught:
        transition(S.IN_PROGRESS, action, held_uid=HELD, given_uid=given)
    assert caught.value.missing is missing and caught.value.ups_status == 0xC301


def test_release_checks_a_transaction_uid_only_when_given() -> None:
    assert transition(S.IN_PROGRESS, A.RELEASE, held_uid=HELD).new is S.SCHEDULED
    with pytest.raises(TransactionUIDError):
        transition(S.IN_PROGRESS, A.RELEASE, held_uid=HELD, given_uid="9.9")


def test_states_are_the_ups_strings() -> None:
    assert [s.value for s in S] == ["SCHEDULED", "IN PROGRESS", "COMPLETED", "CANCELED"]
    assert transition("SCHEDULED", A.CLAIM).new == "IN PROGRESS"
    with pytest.raises(ValueError, match="IN_PROGRESS"):
        transition("IN_PROGRESS", A.COMPLETE)
