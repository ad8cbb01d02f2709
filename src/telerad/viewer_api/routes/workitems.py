"""UPS-RS: the reading worklist as DICOMweb workitems (PS3.18 chapter 11).

========================================== ================================================
GET /dicomweb/workitems                    Search for Workitems (§11.9): ProcedureStepState,
                                           ScheduledProcedureStepPriority, SOPInstanceUID,
                                           ReferencedRequestSequence.StudyInstanceUID,
                                           PatientID, ScheduledProcedureStepStartDateTime and
                                           ExpectedCompletionDateTime (ranges); limit, offset
GET /dicomweb/workitems/{workitem}         Retrieve Workitem (§11.5), application/dicom+json
PUT /dicomweb/workitems/{workitem}/state   Change Workitem State (§11.7): a DICOM JSON data
                                           set with ProcedureStepState (0074,1000) and
                                           Transaction UID (0008,1195)
========================================== ================================================

Change state answers 200 (with the Warning of §11.7.3.2 when the workitem is already COMPLETED
or CANCELED as asked), 400 for a missing or incorrect Transaction UID or a change back to
SCHEDULED, 404 for a workitem the caller may not see, and 409 when the workitem's state does
not allow the change (already claimed, not claimed, final); refusals carry the Warning texts of
§11.7.3.2. Search ignores unsupported keys with a Warning (PS3.18 §8.3.4.1). Workitems are
created by intake, not by clients: Create (§11.4) and Update (§11.6) are not offered.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from telerad.storage import ReadingTask, record_access
from telerad.viewer_api.deps import AddressDep, BaseUrlDep, ServicesDep
from telerad.viewer_api.encoding import content_codings, decoded_body
from telerad.viewer_api.multipart import media_type
from telerad.viewer_api.problems import BadRequest, UnsupportedMediaType
from telerad.viewer_api.routes.worklist import ActorDep, PolicyDep
from telerad.worklist import (
    Actor,
    InvalidTransition,
    TransactionUIDError,
    change_workitem_state,
    parse_workitem_query,
    retrieve_workitem,
    search_workitems,
    workitem_json,
)

router = APIRouter(tags=["UPS-RS"])
DICOM_JSON = "application/dicom+json"
MAX_STATE_BODY = 64 * 1024
INCONSISTENT = "The submitted request is inconsistent with the state of the UPS Instance."


@router.get("/workitems")
def search_for_workitems(
    request: Request, services: ServicesDep, actor: ActorDep, address: AddressDep
) -> Response:
    """Search the caller's workitems (the same ones his worklist shows)."""
    query = parse_workitem_query(request.query_params.multi_items())
    with services.sessions() as session:
        found = search_workitems(session, actor, query)
    with services.writer.begin() as session:
        _audit(session, actor, address, "ups-search", request, [t.study_uid for t, _ in found])
    body = [workitem_json(facts, inputs=False) for _, facts in found]
    headers = {}
    if query.ignored:
        headers["Warning"] = f'299 telerad "ignored matching keys: {",".join(query.ignored)}"'
    return Response(_dump(body), 200, headers, DICOM_JSON)


@router.get("/workitems/{workitem}")
def retrieve_workitem_route(
    workitem: str, request: Request, services: ServicesDep, actor: ActorDep, base: BaseUrlDep,
    address: AddressDep,
) -> Response:  # fmt: skip
    """One workitem with the study's instances as Input Information Sequence."""
    with services.sessions() as session:
        task, facts = retrieve_workitem(session, workitem, actor, base)
    with services.writer.begin() as session:
        _audit(session, actor, address, "ups-retrieve", request, [task.study_uid])
    return Response(_dump([workitem_json(facts)]), media_type=DICOM_JSON)


@router.put("/workitems/{workitem}/state")
async def change_state(
    workitem: str, request: Request, services: ServicesDep, actor: ActorDep,
    policy: PolicyDep, address: AddressDep,
) -> Response:  # fmt: skip
    """Change Workitem State (PS3.18 §11.7, PS3.4 Table CC.1.1-2)."""
    state, transaction_uid = await _state_request(request)

    def change() -> tuple[ReadingTask, str | None]:
        with services.writer.begin() as session:
            task, warning = change_workitem_state(
                session, workitem, actor, state, transaction_uid, lease=policy.lease
            )
            _audit(session, actor, address, "ups-state", request, [task.study_uid], state)
        return task, warning

    try:
        _, warning = await run_in_threadpool(change)
    except InvalidTransition as exc:
        return _refusal(exc)
    headers = {"Warning": f"299 telerad: {warning}"} if warning else {}
    return Response(status_code=200, headers=headers)


def _refusal(exc: InvalidTransition) -> JSONResponse:
    """400 with the Transaction UID texts, 409 for a state conflict (PS3.18 §11.7.3)."""
    if isinstance(exc, TransactionUIDError):
        text = (
            "The Transaction UID is missing."
            if exc.missing
            else "The Transaction UID is incorrect."
        )
        status = 400
    else:
        text, status = INCONSISTENT, 400 if exc.ups_status == 0xC303 else 409
    return JSONResponse(
        {"detail": str(exc), "status": f"{exc.ups_status:04X}"},
        status_code=status,
        headers={"Warning": f"299 telerad: {text}"},
    )


async def _state_request(request: Request) -> tuple[str, str | None]:
    """ProcedureStepState and Transaction UID from the DICOM JSON body (object or a one-item
    array, as PS3.18 Annex F allows)."""
    kind = media_type(request.headers.get("content-type", ""))[0]
    if kind not in (DICOM_JSON, "application/json"):
        raise UnsupportedMediaType("Change Workitem State takes application/dicom+json")
    codings = content_codings(request.headers.get("content-encoding"))
    raw = b"".join([c async for c in decoded_body(request.stream(), codings, MAX_STATE_BODY)])
    try:
        data: Any = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"the body is not JSON: {exc}") from exc
    if isinstance(data, list) and len(data) == 1:
        data = data[0]
    if not isinstance(data, dict):
        raise BadRequest("the body is one DICOM JSON data set")
    state = _value(data, "00741000")
    if not state:
        raise BadRequest("Procedure Step State (0074,1000) is required")
    return state, _value(data, "00081195")


def _value(data: dict[str, Any], tag: str) -> str | None:
    element = data.get(tag)
    if element is None:
        return None
    values = element.get("Value") if isinstance(element, dict) else None
    if not values:
        return None
    if not isinstance(values, list) or not isinstance(values[0], str) or len(values[0]) > 64:
        raise BadRequest(f"({tag[:4]},{tag[4:]}) must hold one short string")
    return values[0]


def _dump(body: list[dict[str, Any]]) -> bytes:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def _audit(
    session: Session, actor: Actor, address: str, action: str, request: Request,
    study_uids: list[str], detail: str = "",
) -> None:  # fmt: skip
    record_access(
        session, actor=actor.name, actor_role=actor.role, action=action,
        resource=request.url.path, source_address=address, study_uids=study_uids,
        detail=detail or str(request.url.query)[:2000],
    )  # fmt: skip
