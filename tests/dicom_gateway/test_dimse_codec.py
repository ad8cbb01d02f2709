"""The hand-coded DIMSE command sets (``dimse_codec``) against pynetdicom's own codec.

Both providers run on real, unconnected pynetdicom associations: what a provider sends is read
back from the DUL's outgoing queue, and what it receives is read from the association's DIMSE
message queue, so pynetdicom itself is the reference for every byte and every field.
"""

from __future__ import annotations

import io
import itertools
import queue
from typing import Any

import pytest
from pydicom.tag import Tag
from pynetdicom import AE, _config, dimse_messages, evt
from pynetdicom import dimse_primitives as P
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import _COMMAND_SET_KEYWORDS, _DATASET_KEYWORDS
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from telerad.dicom_gateway.dimse_codec import FastDIMSE, decode_command, encode_command
from tests.dicom_gateway.test_reactor import _ct_dataset, _requestor, _scp, _Served

CLASSES = (P.C_STORE, P.C_FIND, P.C_GET, P.C_MOVE, P.C_ECHO, P.N_EVENT_REPORT, P.N_GET, P.N_SET,
           P.N_ACTION, P.N_CREATE, P.N_DELETE)  # fmt: skip
DATA_SET_KEYWORDS = set(_DATASET_KEYWORDS.values())
ENCODED_DATA_SET = b"\x08\x00\x18\x00\x04\x00\x00\x001.2\x00"


@pytest.fixture(autouse=True)
def _no_standard_handlers(monkeypatch: pytest.MonkeyPatch) -> None:
    """As in the gateway (``scp.quiet_pynetdicom``): pynetdicom's logging handlers for
    EVT_DIMSE_SENT/RECV are not bound, else both providers would take pynetdicom's path."""
    monkeypatch.setattr(_config, "LOG_HANDLER_LEVEL", "none")


def _association(max_pdu: int) -> Association:
    """A real pynetdicom association that never connects, whose peer accepts ``max_pdu``."""
    assoc = Association(AE(ae_title="TEST"), "requestor")
    assoc.acceptor.maximum_length = max_pdu
    return assoc


def _primitive(cls: type, response: bool, variant: str) -> Any:
    """A primitive of ``cls`` with every field its message can carry, as a variant asks."""
    primitive = cls()
    if response:
        primitive.MessageIDBeingRespondedTo = 7
        primitive.Status = {"pending": 0xFF00, "failure": 0xA700}.get(variant, 0x0000)
    else:
        primitive.MessageID = 7
    fields: dict[str, Any] = {
        "AffectedSOPClassUID": CTImageStorage,
        "AffectedSOPInstanceUID": "1.2.826.0.1.3680043.8.498.1234567890123",
        "RequestedSOPClassUID": "1.2.840.10008.1.20.1",
        "RequestedSOPInstanceUID": "1.2.840.10008.1.20.1.1",
        "Priority": 1,
        "EventTypeID": 2,
        "ActionTypeID": 1,
        "MoveDestination": "STORESCP",
        "NumberOfRemainingSuboperations": 3,
        "NumberOfCompletedSuboperations": 4,
        "NumberOfFailedSuboperations": 0,
        "NumberOfWarningSuboperations": 1,
    }
    if variant == "failure":
        fields["ErrorComment"] = "disk full"
        fields["OffendingElement"] = [Tag(0x00100010), Tag(0x00100020)]
        fields["ErrorID"] = 5
    if variant == "sub-operation":
        fields["MoveOriginatorApplicationEntityTitle"] = "MOVESCU"
        fields["MoveOriginatorMessageID"] = 3
    if variant == "attributes":
        fields["AttributeIdentifierList"] = [Tag(0x00080018), Tag(0x00100010)]
    for name, value in fields.items():
        if hasattr(primitive, name):
            setattr(primitive, name, value)
    for name in DATA_SET_KEYWORDS:
        if hasattr(primitive, name) and variant != "no data set":
            setattr(primitive, name, io.BytesIO(b"" if variant == "empty" else ENCODED_DATA_SET))
    return primitive


VARIANTS = ("plain", "pending", "failure", "sub-operation", "attributes", "empty", "no data set")
CASES = list(itertools.product(CLASSES, (False, True), VARIANTS))


def _sent(provider_class: type, primitive: Any, max_pdu: int) -> list[list[tuple[int, bytes]]]:
    assoc = _association(max_pdu)
    assoc.dimse.__class__ = provider_class
    assoc.dimse.send_msg(primitive, 3)
    outgoing: queue.Queue[P_DATA] = assoc.dul.to_provider_queue
    sent = []
    while not outgoing.empty():
        sent.append(list(outgoing.get().presentation_data_value_list))
    return sent


@pytest.mark.parametrize(("cls", "response", "variant"), CASES)
@pytest.mark.parametrize("max_pdu", [0, 16384, 64])
def test_sent_messages_are_pynetdicoms_byte_for_byte(
    cls: type, response: bool, variant: str, max_pdu: int
) -> None:
    reference = _sent(DIMSEServiceProvider, _primitive(cls, response, variant), max_pdu)
    fast = _sent(FastDIMSE, _primitive(cls, response, variant), max_pdu)
    assert fast == reference
    assert reference  # something was sent at all
    if max_pdu == 64:
        assert all(len(pdv) <= 64 - 6 + 1 for pdata in fast for _, pdv in pdata)


def _pynetdicom_codec_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("pynetdicom's command set codec was used")

    monkeypatch.setattr(dimse_messages, "encode", fail)
    monkeypatch.setattr(dimse_messages, "decode", fail)


@pytest.mark.parametrize(("cls", "response", "variant"), CASES)
def test_every_message_is_sent_without_pynetdicoms_codec(
    cls: type, response: bool, variant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The comparison above would pass if FastDIMSE always fell back to pynetdicom."""
    reference = _sent(DIMSEServiceProvider, _primitive(cls, response, variant), 16384)
    _pynetdicom_codec_fails(monkeypatch)
    assert _sent(FastDIMSE, _primitive(cls, response, variant), 16384) == reference


COMMON = [
    (cls, response, variant)
    for cls, response, variant in CASES
    if cls in (P.C_STORE, P.C_ECHO, P.C_FIND) and variant in ("plain", "pending")
]


@pytest.mark.parametrize(("cls", "response", "variant"), COMMON)
def test_common_messages_are_received_without_pynetdicoms_codec(
    cls: type, response: bool, variant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = _sent(DIMSEServiceProvider, _primitive(cls, response, variant), 64)
    reference = _received(DIMSEServiceProvider, sent)
    _pynetdicom_codec_fails(monkeypatch)
    assert _received(FastDIMSE, sent) == reference
    command, _data_set = encode_command(_primitive(cls, response, variant))
    assert decode_command(command)["CommandGroupLength"] == len(command) - 12


def test_text_that_is_not_ascii_goes_pynetdicoms_way() -> None:
    primitive = _primitive(P.C_STORE, True, "failure")
    primitive.ErrorComment = "Speicher voll: Überlauf"
    assert _sent(FastDIMSE, primitive, 0) == _sent(DIMSEServiceProvider, primitive, 0)


def _fields(primitive: Any) -> dict[str, Any]:
    names = {kw for kws in _COMMAND_SET_KEYWORDS.values() for kw in kws} | DATA_SET_KEYWORDS
    values = {}
    for name in sorted(names):
        if hasattr(primitive, name):
            value = getattr(primitive, name)
            values[name] = value.getvalue() if isinstance(value, io.BytesIO) else value
    return {"type": type(primitive).__name__, "context": primitive._context_id, **values}


def _received(provider_class: type, pdatas: list[list[tuple[int, bytes]]]) -> list[dict[str, Any]]:
    assoc = _association(0)
    assoc.dimse.__class__ = provider_class
    for pdvs in pdatas:
        pdata = P_DATA()
        pdata.presentation_data_value_list.extend(pdvs)
        assoc.dimse.receive_primitive(pdata)
    messages = []
    while not assoc.dimse.msg_queue.empty():
        messages.append(_fields(assoc.dimse.msg_queue.get()[1]))
    messages += [{"cancel": _fields(primitive)} for primitive in assoc.dimse.cancel_req.values()]
    assert assoc.dul.event_queue.empty()  # neither saw an invalid message
    return messages


#: Not received: an N-EVENT-REPORT request (both serve it at once on a thread of its own),
#: and a message that announces a data set and sends none ("empty"), which both wait for.
RECEIVED_CASES = [
    case
    for case in CASES
    if not (case[0] is P.N_EVENT_REPORT and not case[1]) and case[2] != "empty"
]


@pytest.mark.parametrize(("cls", "response", "variant"), RECEIVED_CASES)
@pytest.mark.parametrize("max_pdu", [0, 64])
def test_received_messages_become_the_primitives_pynetdicom_makes(
    cls: type, response: bool, variant: str, max_pdu: int
) -> None:
    sent = _sent(DIMSEServiceProvider, _primitive(cls, response, variant), max_pdu)
    reference = _received(DIMSEServiceProvider, sent)
    assert len(reference) == 1
    assert _received(FastDIMSE, sent) == reference


def test_a_cancel_request_is_kept_aside_as_pynetdicom_keeps_it() -> None:
    cancel = P.C_CANCEL()
    cancel.MessageIDBeingRespondedTo = 7
    sent = _sent(DIMSEServiceProvider, cancel, 0)
    reference = _received(DIMSEServiceProvider, sent)
    assert reference and "cancel" in reference[0]
    assert _received(FastDIMSE, sent) == reference


def test_two_messages_in_one_p_data_are_both_received() -> None:
    """PS3.8 §9.3.5 lets a P-DATA-TF PDU carry PDVs of consecutive messages."""
    first = _sent(DIMSEServiceProvider, _primitive(P.C_ECHO, False, "plain"), 0)
    second = _sent(DIMSEServiceProvider, _primitive(P.C_STORE, False, "plain"), 0)
    combined = [[pdv for pdata in first + second for pdv in pdata]]
    received = _received(FastDIMSE, combined)
    assert [message["type"] for message in received] == ["C_ECHO", "C_STORE"]
    assert received[1]["DataSet"] == ENCODED_DATA_SET


def test_a_command_set_the_fast_path_does_not_read_is_handed_to_pynetdicom_whole() -> None:
    """A C-STORE response with an offending element (AT) and a command set split over several
    PDVs: pynetdicom decodes it, from the first fragment on."""
    sent = _sent(DIMSEServiceProvider, _primitive(P.C_STORE, True, "failure"), 64)
    assert len(sent) > 2
    with pytest.raises(Exception, match="AT"):
        decode_command(b"".join(pdv[1:] for pdata in sent for _, pdv in pdata))
    assert _received(FastDIMSE, sent) == _received(DIMSEServiceProvider, sent)


def test_bound_dimse_event_handlers_get_pynetdicoms_messages() -> None:
    """Someone who binds EVT_DIMSE_SENT expects pynetdicom's DIMSE message objects."""
    assoc = _association(0)
    assoc.dimse.__class__ = FastDIMSE
    seen: list[str] = []
    assoc.bind(evt.EVT_DIMSE_SENT, lambda event: seen.append(type(event.message).__name__))
    assoc.dimse.send_msg(_primitive(P.C_ECHO, True, "plain"), 1)
    assert seen == ["C_ECHO_RSP"]


def test_the_gateways_associations_use_the_fast_codec_end_to_end() -> None:
    served = _Served()
    with _scp(served) as port:
        assoc = _requestor(port)
        try:
            assoc.dimse.__class__ = FastDIMSE  # the requestor too: both ends hand-coded
            dataset = _ct_dataset()
            stored = assoc.send_c_store(dataset)
            echoed = assoc.send_c_echo()
        finally:
            assoc.release()
    assert stored.Status == 0x0000 and echoed.Status == 0x0000
    assert [kind for kind, _ in served.threads] == ["store", "echo"]
    assert served.datasets[0].SOPInstanceUID == dataset.SOPInstanceUID
    assert served.providers == {"FastDIMSE"}
