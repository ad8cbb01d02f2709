"""DIMSE command sets encoded and decoded by hand, for the messages every association carries.

A DIMSE message is a command set, always encoded Implicit VR Little Endian (PS3.7 §6.3.1,
§9.3, §10.3), optionally followed by a data set, both split into PDVs (PS3.8 Annex E).
pynetdicom builds each command set as a pydicom :class:`~pydicom.dataset.Dataset`, encodes it
twice with pydicom's writer (once to learn the Command Group Length, once to send it), and
decodes each received one with pydicom's reader before copying its elements to a primitive.
Measured on this project's two-core machine: building and encoding a C-STORE-RSP took
0.84 ms of CPU, decoding a C-STORE-RQ's command set 0.33 ms, out of some 5 ms per stored
instance; a C-FIND paid the same twice over (pending and final responses).

:class:`FastDIMSE` does the same work directly on bytes:

* :func:`encode_command` writes the command set of a primitive with exactly the elements, in
  the same order and with the same values that pynetdicom would write (its own table of
  keywords per message, ``dimse_messages._COMMAND_SET_KEYWORDS``), with
  (0000,0000) Command Group Length, (0000,0100) Command Field and (0000,0800) Command Data Set
  Type computed as pynetdicom computes them;
* :func:`decode_command` reads a received command set into ``{keyword: value}`` with the
  values pydicom would give, for what the common messages carry: UIDs (padding removed) and
  single ``US``/``UL`` numbers. :meth:`FastDIMSE.receive_primitive` copies them to the
  primitive as pynetdicom's ``message_to_primitive`` does; a command set with anything else
  (an error comment, an offending element, an AE title) is handed to pynetdicom whole.

Everything else is pynetdicom's: the primitives and their checks, the P-DATA fragmentation
(PDV size from the peer's maximum PDU length), the DUL, the events. Whenever the fast path
cannot be sure to write what pynetdicom would (a value type or VR not handled here, text that
is not ASCII, an ``EVT_DIMSE_SENT``/``EVT_DIMSE_RECV`` handler bound, a data set sent from a
file, data sets received into files) the message goes pynetdicom's way. The tests compare
both encodings byte for byte over every message type.

Installed per association by swapping the class of ``assoc.dimse``
(:func:`install_fast_dimse`), as :mod:`.reactor` does with its queues.
"""

from __future__ import annotations

import logging
import struct
import threading
from io import BytesIO
from typing import Any, cast

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pynetdicom import _config, evt
from pynetdicom.dimse import _RQ_TO_MESSAGE, _RSP_TO_MESSAGE, DIMSEServiceProvider
from pynetdicom.dimse_messages import (
    _COMMAND_SET_KEYWORDS,
    _DATASET_KEYWORDS,
    _MESSAGE_TYPES,
    _MSG_TO_PRIMITVE,
    DIMSEMessage,
)
from pynetdicom.dimse_primitives import C_CANCEL, N_EVENT_REPORT
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.utils import make_target

__all__ = ["FastDIMSE", "decode_command", "encode_command", "install_fast_dimse"]

logger = logging.getLogger(__name__)

_NO_DATA_SET = 0x0101
_DATA_SET = 0x0001
_GROUP_LENGTH_ELEMENT = struct.pack("<HHI", 0x0000, 0x0000, 4)

#: Message name ("C-STORE-RSP") → its Command Field value (PS3.7 §9.3, §10.3).
_COMMAND_FIELDS = {name: field for field, (name, _cls) in _MESSAGE_TYPES.items()}
#: Command Field → message class name as in ``_DATASET_KEYWORDS`` ("C_STORE_RSP").
_MESSAGE_NAMES = {field: cls.__name__ for field, (_name, cls) in _MESSAGE_TYPES.items()}
_STRING_VRS = {"UI", "AE", "LO", "SH", "CS", "ST", "LT"}


class _Unsupported(Exception):
    """A value the fast codec does not write or read exactly as pydicom; take pynetdicom's
    path."""


def _element_table(name: str) -> tuple[tuple[str, int, str], ...]:
    """(keyword, tag, VR) of a message's command elements, in tag order (pydicom writes a
    data set sorted by tag)."""
    rows = [
        (kw, int(tag_for_keyword(kw) or 0), dictionary_VR(kw)) for kw in _COMMAND_SET_KEYWORDS[name]
    ]
    return tuple(sorted(rows, key=lambda row: row[1]))


_TABLES = {name: _element_table(name) for name in _COMMAND_SET_KEYWORDS}
_VR_OF = {tag: vr for table in _TABLES.values() for _kw, tag, vr in table}
_KEYWORD_OF = {tag: kw for table in _TABLES.values() for kw, tag, _vr in table}


def _value_bytes(vr: str, value: Any) -> bytes:
    """A command element's value as pydicom writes it in Implicit VR Little Endian."""
    if value is None:
        return b""
    if vr in _STRING_VRS:
        if not isinstance(value, str):
            raise _Unsupported(vr)
        try:
            data = value.encode("ascii")
        except UnicodeEncodeError as exc:
            raise _Unsupported("non-ASCII text") from exc
        if len(data) % 2:
            data += b"\0" if vr == "UI" else b" "
        return data
    if vr in ("US", "UL"):
        values = value if isinstance(value, list | tuple) else [value]
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise _Unsupported(vr)
        return struct.pack(f"<{len(values)}{'H' if vr == 'US' else 'I'}", *values)
    if vr == "AT":
        tags = value if isinstance(value, list | tuple) else [value]
        if not all(isinstance(t, int) for t in tags):
            raise _Unsupported(vr)
        return b"".join(struct.pack("<HH", int(t) >> 16, int(t) & 0xFFFF) for t in tags)
    raise _Unsupported(vr)


def _message_name(primitive: Any) -> str:
    """ "C_STORE_RSP" for a C-STORE response: requests have no Message ID Being Responded To
    (pynetdicom's rule, ``DIMSEServiceProvider.send_msg``)."""
    is_request = primitive.MessageIDBeingRespondedTo is None
    return (_RQ_TO_MESSAGE if is_request else _RSP_TO_MESSAGE)[primitive.__class__].__name__


def encode_command(primitive: Any) -> tuple[bytes, BytesIO | None]:
    """The encoded command set of ``primitive`` and the data set to send after it (None or
    empty when there is none), exactly as pynetdicom's ``DIMSEMessage.primitive_to_message`` and
    ``encode_msg`` produce them.

    Raises :class:`_Unsupported` where the fast path could differ from pynetdicom.
    """
    if getattr(primitive, "_dataset_path", None):
        raise _Unsupported("data set from a file")
    cls_name = _message_name(primitive)
    name = cls_name.replace("_", "-")
    data_set: BytesIO | None = BytesIO()
    data_set_type = _NO_DATA_SET
    keyword = _DATASET_KEYWORDS.get(cls_name)
    if keyword is not None:
        data_set = getattr(primitive, keyword)
        if data_set is not None:  # pynetdicom tests the BytesIO's truth, which is always True
            data_set_type = _DATA_SET
    parts = []
    for kw, tag, vr in _TABLES[name]:
        if kw == "CommandGroupLength":
            continue
        if kw == "CommandField":
            value: Any = _COMMAND_FIELDS[name]
        elif kw == "CommandDataSetType":
            value = data_set_type
        elif hasattr(primitive, kw):
            value = getattr(primitive, kw)
            if value is None:  # pynetdicom deletes the element
                continue
        else:
            value = None  # left in the command set with no value
        data = _value_bytes(vr, value)
        parts.append(struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(data)))
        parts.append(data)
    body = b"".join(parts)
    return _GROUP_LENGTH_ELEMENT + struct.pack("<I", len(body)) + body, data_set


def decode_command(encoded: bytes) -> dict[str, Any]:
    """``{keyword: value}`` of an encoded command set, each value as pydicom decodes it.

    Only what the common messages carry is read here: UI (trailing NUL and spaces removed),
    US and UL with one value each, every element non-empty and known to the command set
    tables. Anything else raises :class:`_Unsupported` so that pynetdicom's reader (and its
    handling of odd messages) takes over.
    """
    values: dict[str, Any] = {}
    offset, end = 0, len(encoded)
    while offset < end:
        if end - offset < 8:
            raise _Unsupported("truncated element header")
        group, element, length = struct.unpack_from("<HHI", encoded, offset)
        offset += 8
        tag = (group << 16) | element
        vr = _VR_OF.get(tag)
        if vr is None or length == 0 or offset + length > end:
            raise _Unsupported(f"element {tag:08X}")
        if vr == "UI":
            try:
                value: Any = encoded[offset : offset + length].decode("ascii").rstrip("\0 ")
            except UnicodeDecodeError as exc:
                raise _Unsupported("non-ASCII UID") from exc
            if "\\" in value:
                raise _Unsupported("multi-valued UID")
        elif vr == "US" and length == 2:
            value = int.from_bytes(encoded[offset : offset + 2], "little")
        elif vr == "UL" and length == 4:
            value = int.from_bytes(encoded[offset : offset + 4], "little")
        else:
            raise _Unsupported(vr)
        offset += length
        values[_KEYWORD_OF[tag]] = value
    return values


class _Incoming:
    """A message being received: its context, command set and data set so far."""

    __slots__ = ("command", "context_id", "data_set", "final", "values")

    def __init__(self) -> None:
        self.command = bytearray()
        self.data_set = BytesIO()
        self.context_id = 0
        self.final = False  # the command set's last fragment has arrived
        self.values: dict[str, Any] = {}


class FastDIMSE(DIMSEServiceProvider):
    """pynetdicom's DIMSE service provider with hand-coded command sets (see the module)."""

    _incoming: _Incoming | None = None

    def send_msg(self, primitive: Any, context_id: int) -> None:
        """Encode and send a DIMSE message (PS3.7 §6.3.1, PS3.8 Annex E), as pynetdicom does."""
        if self.assoc.get_handlers(evt.EVT_DIMSE_SENT):
            super().send_msg(primitive, context_id)
            return
        try:
            command, data_set = encode_command(primitive)
        except _Unsupported:
            super().send_msg(primitive, context_id)
            return
        max_pdu = self.maximum_pdu_size
        for last, chunk in _fragments(command, max_pdu):
            self._send_pdv(context_id, 0x03 if last else 0x01, chunk)
        payload = data_set.getvalue() if data_set is not None else b""
        if payload:
            for last, chunk in _fragments(payload, max_pdu):
                self._send_pdv(context_id, 0x02 if last else 0x00, chunk)

    def _send_pdv(self, context_id: int, control: int, chunk: bytes) -> None:
        pdata = P_DATA()
        pdata.presentation_data_value_list.append((context_id, bytes((control,)) + chunk))
        self.dul.send_pdu(pdata)

    def receive_primitive(self, primitive: P_DATA) -> None:
        """Collect a received P-DATA's PDVs (PS3.8 Annex E); a complete message becomes a
        DIMSE primitive routed as pynetdicom routes it (C-CANCEL kept aside, N-EVENT-REPORT
        served at once on a thread of its own, everything else queued for the reactor)."""
        if (
            self.message is not None  # pynetdicom is part way through a message
            or _config.STORE_RECV_CHUNKED_DATASET
            or self.assoc.get_handlers(evt.EVT_DIMSE_RECV)
        ):
            super().receive_primitive(primitive)
            return
        pdvs = primitive.presentation_data_value_list
        for index, (context_id, data) in enumerate(pdvs):
            incoming = self._incoming
            if incoming is None:
                incoming = self._incoming = _Incoming()
            header = data[0]
            if header & 1:
                incoming.command += data[1:]
                incoming.context_id = context_id
                if not header & 2:
                    continue
                incoming.final = True
                try:
                    incoming.values = decode_command(bytes(incoming.command))
                    if incoming.values.get("CommandField") not in _MESSAGE_NAMES:
                        raise _Unsupported("unknown Command Field")
                except _Unsupported:
                    self._hand_over(incoming, pdvs[index + 1 :])
                    return
                if incoming.values.get("CommandDataSetType") == _NO_DATA_SET:
                    self._complete(incoming)
            else:
                if not incoming.values:  # a data set before its command set
                    self._hand_over(incoming, pdvs[index:])
                    return
                incoming.data_set.write(data[1:])
                if header & 2:
                    self._complete(incoming)

    def _hand_over(self, incoming: _Incoming, rest: list[tuple[int, bytes]]) -> None:
        """Give pynetdicom a message this class does not decode: what arrived of it so far, as
        one command fragment, then the rest of the P-DATA."""
        self._incoming = None
        pdata = P_DATA()
        if incoming.command:
            control = 0x03 if incoming.final else 0x01
            pdata.presentation_data_value_list.append(
                (incoming.context_id, bytes((control,)) + bytes(incoming.command))
            )
        pdata.presentation_data_value_list.extend(rest)
        if pdata.presentation_data_value_list:
            super().receive_primitive(pdata)

    def _complete(self, incoming: _Incoming) -> None:
        """The received message as a primitive, routed as in pynetdicom's
        ``receive_primitive``."""
        self._incoming = None
        values = incoming.values
        cls_name = _MESSAGE_NAMES[values["CommandField"]]
        primitive: Any = _MSG_TO_PRIMITVE[cls_name[: cls_name.rfind("_R")]]()
        try:
            for keyword, value in values.items():
                if hasattr(primitive, keyword):
                    setattr(primitive, keyword, value)
            data_set_keyword = _DATASET_KEYWORDS.get(cls_name)
            if data_set_keyword is not None:  # an empty BytesIO when none came, as in pynetdicom
                setattr(primitive, data_set_keyword, incoming.data_set)
        except Exception:
            # as pynetdicom: an invalid message aborts the association (Evt19, PS3.8 §9.2)
            logger.exception("received an invalid DIMSE message")
            self.dul.event_queue.put("Evt19")
            return
        context_id = incoming.context_id
        primitive._context_id = context_id
        if isinstance(primitive, C_CANCEL) and len(self.cancel_req) < 10:
            self.cancel_req[cast(int, primitive.MessageIDBeingRespondedTo)] = primitive
        elif isinstance(primitive, N_EVENT_REPORT) and primitive.is_valid_request:
            threading.Thread(
                target=make_target(self.assoc._serve_request), args=(primitive, context_id)
            ).start()
        else:
            self.msg_queue.put((context_id, primitive))


def _fragments(payload: bytes, max_pdu: int) -> list[tuple[bool, bytes]]:
    """``(is last, fragment)`` of a non-empty payload, split by pynetdicom's own splitter
    (the peer's maximum PDU length less 6 bytes of PDV item header, PS3.8 §9.3.5, Annex E)."""
    chunks = list(DIMSEMessage._generate_pdv_fragments(payload, max_pdu))
    return [(i == len(chunks) - 1, chunk) for i, chunk in enumerate(chunks)]


def install_fast_dimse(assoc: Any) -> None:
    """Make ``assoc`` use :class:`FastDIMSE` (at ``EVT_CONN_OPEN``, before any message)."""
    if type(assoc.dimse) is DIMSEServiceProvider:
        assoc.dimse.__class__ = FastDIMSE
