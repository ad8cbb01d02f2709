"""Two latency fixes for pynetdicom's acceptor, kept out of the handlers.

1. **Message pickup.** pynetdicom's acceptor reactor (``Association._run_reactor``) sleeps
   1 ms, then polls its DIMSE queue without blocking. Every C-STORE request therefore waits on
   average half a millisecond after its last PDU arrived before the handler runs — about a
   tenth of a 512 KiB CT slice's whole turnaround. :func:`install_responsive_reactor` replaces
   that one sleep, for acceptor reactor threads only, with a wait on the DIMSE queue's own
   condition (at most the same 1 ms), so a complete message is served as soon as the DUL thread
   queues it. The loop, its release/abort checks and every other sleep are unchanged.
2. **Association set-up.** For every association pynetdicom ``deepcopy``-s the server's
   supported presentation contexts (here 170 storage SOP classes x 45 transfer syntaxes, plus
   verification and commitment): ~0.15 s of CPU per association, paid by every modality that
   opens one association per series. :class:`CheapCopyContexts` returns an equivalent copy —
   new ``PresentationContext`` objects with their own transfer syntax lists — in a few ms.

Both rely on pynetdicom internals (checked on 3.0): the reactor's ``time`` module
reference, ``DIMSEServiceProvider.msg_queue`` (a :class:`queue.Queue`) and
``PresentationContext``'s attributes. If those change, the fallbacks are pynetdicom's own
behaviour, never an error.
"""

from __future__ import annotations

import copy
import queue
import threading
import time
from typing import Any

from pynetdicom import association
from pynetdicom.presentation import PresentationContext

#: The sleep pynetdicom's acceptor reactor takes between polls of its DIMSE queue.
REACTOR_SLEEP_SECONDS = 0.001

_install_lock = threading.Lock()


class _ReactorClock:
    """Stands in for the ``time`` module inside :mod:`pynetdicom.association`."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        messages = _acceptor_queue() if seconds == REACTOR_SLEEP_SECONDS else None
        if messages is None:
            time.sleep(seconds)
            return
        with messages.not_empty:
            if not messages.queue:  # the deque; qsize() would take the held mutex again
                messages.not_empty.wait(seconds)


def _acceptor_queue() -> queue.Queue[Any] | None:
    """The DIMSE message queue of the acceptor association running this thread, if any."""
    thread = threading.current_thread()
    if not isinstance(thread, association.Association) or not thread.is_acceptor:
        return None
    messages = getattr(getattr(thread, "dimse", None), "msg_queue", None)
    return messages if isinstance(messages, queue.Queue) else None


def install_responsive_reactor() -> None:
    """Make acceptor reactors pick up complete DIMSE messages at once (idempotent)."""
    with _install_lock:
        if not isinstance(getattr(association, "time", None), _ReactorClock):
            setattr(association, "time", _ReactorClock())  # noqa: B010 - not an export


class CheapCopyContexts(list[PresentationContext]):
    """The server's supported contexts, deep-copied per association without ``copy.deepcopy``
    walking every UID object."""

    def __deepcopy__(self, memo: dict[int, Any]) -> list[PresentationContext]:
        try:
            return [_copy_context(context) for context in self]
        except AttributeError:  # pynetdicom changed PresentationContext: be correct, not fast
            return [copy.deepcopy(context, memo) for context in self]


def _copy_context(context: PresentationContext) -> PresentationContext:
    fresh = PresentationContext.__new__(PresentationContext)
    fresh.__dict__.update(context.__dict__)
    fresh._transfer_syntax = list(context._transfer_syntax)
    return fresh
