"""The batched audit writer: every event written, in order of arrival, on both databases."""

from __future__ import annotations

import threading

from sqlalchemy import Engine, select

from telerad.storage import AuditEvent, session_factory
from telerad.viewer_api.auditing import AuditWriter


def _event(number: int) -> dict[str, object]:
    return {
        "actor": f"user{number % 3}",
        "actor_role": "radiologist",
        "action": "rendered-instance",
        "resource": f"/dicomweb/studies/1.2.{number}/rendered",
        "source_address": "127.0.0.1",
        "detail": str(number),
    }


def _written(engine: Engine) -> list[str]:
    with session_factory(engine)() as session:
        return list(session.scalars(select(AuditEvent.detail).order_by(AuditEvent.id)))


def test_every_event_from_many_threads_is_written(engine: Engine) -> None:
    writer = AuditWriter(session_factory(engine, writer=True), max_batch=7, max_queued=5)
    threads = [
        threading.Thread(
            target=lambda n=n: [writer.record(**_event(n * 100 + i)) for i in range(40)]
        )
        for n in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    writer.flush()

    assert sorted(_written(engine), key=int) == [
        str(n * 100 + i) for n in range(4) for i in range(40)
    ]
    writer.close()


def test_close_writes_what_is_queued_and_later_events_still_land(engine: Engine) -> None:
    writer = AuditWriter(session_factory(engine, writer=True))
    for number in range(25):
        writer.record(**_event(number))

    writer.close()
    assert _written(engine) == [str(n) for n in range(25)]  # one thread: arrival order

    writer.record(**_event(99))  # after shutdown: written by the caller itself
    assert _written(engine)[-1] == "99"
