"""C-FIND and retrieve identifiers as QIDO-RS queries, and QIDO-RS answers as C-FIND
responses (pure: pydicom only, no network).

The gateway keeps no catalog of its own: a C-FIND (PS3.4 C.4.1) becomes one QIDO-RS search
(PS3.18 §10.6) at the centre, whose matcher (PS3.4 C.2.2.2: single value, universal, wildcard,
range and UID list matching) is the one QIDO-RS uses, and whose site scope gives the gateway
exactly its site's studies.

* Every identifier attribute with a value is a matching key, sent as ``keyword=value``
  (multiple values joined with ``\\``); every attribute is also a return key, asked for with
  ``includefield``. Sequence matching is not supported: a sequence is a return key only.
* Levels: STUDY → ``/studies``, SERIES → ``/series``, IMAGE → ``/instances``; PATIENT (Patient
  Root only) → ``/studies``, grouped by Patient ID and Issuer of Patient ID, with
  Number of Patient Related Studies/Series/Instances summed from the studies
  (PS3.4 C.3.2, C.6.1.1.2).
* Keys of higher levels are matched too (relational queries, PS3.4 C.4.1.2.2), so a Study Root
  SERIES query without a Study Instance UID is answered rather than refused.
* A response holds exactly the requested keys (values from the centre, empty when it has
  none), plus Query/Retrieve Level, Retrieve AE Title and Specific Character Set
  (PS3.4 C.4.1.1.3.2). Private attributes are not supported (pending status 0xFF01).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom import Dataset
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag

from telerad.dicom_gateway.errors import InvalidIdentifier

QUERY_RETRIEVE_LEVEL = 0x00080052
SPECIFIC_CHARACTER_SET = 0x00080005
RETRIEVE_AE_TITLE = 0x00080054
#: Attributes the gateway computes or sets itself rather than asking the centre for.
_LOCAL = {QUERY_RETRIEVE_LEVEL, SPECIFIC_CHARACTER_SET, RETRIEVE_AE_TITLE}


class Model(enum.Enum):
    """Query/Retrieve Information Models (PS3.4 C.6.1, C.6.2)."""

    PATIENT_ROOT = "PATIENT"
    STUDY_ROOT = "STUDY"


#: Levels each model allows (PS3.4 Tables C.6-1 and C.6-5).
LEVELS = {
    Model.PATIENT_ROOT: ("PATIENT", "STUDY", "SERIES", "IMAGE"),
    Model.STUDY_ROOT: ("STUDY", "SERIES", "IMAGE"),
}
#: The QIDO-RS resource that answers each level.
RESOURCES = {"PATIENT": "studies", "STUDY": "studies", "SERIES": "series", "IMAGE": "instances"}
#: The Unique Key of each level (PS3.4 C.6.1.1, C.6.2.1): a retrieve must give it.
UNIQUE_KEYS = {
    "PATIENT": "PatientID",
    "STUDY": "StudyInstanceUID",
    "SERIES": "SeriesInstanceUID",
    "IMAGE": "SOPInstanceUID",
}
#: Patient-level counts, computed from the studies of each patient (PS3.4 C.6.1.1.2).
PATIENT_COUNTS = {
    "NumberOfPatientRelatedStudies": None,
    "NumberOfPatientRelatedSeries": "NumberOfStudyRelatedSeries",
    "NumberOfPatientRelatedInstances": "NumberOfStudyRelatedInstances",
}


@dataclass(frozen=True, slots=True)
class ReturnKey:
    """One attribute the response must hold."""

    tag: int
    vr: str

    @property
    def hex(self) -> str:
        """The DICOM JSON key (PS3.18 F.2.1)."""
        return f"{self.tag:08X}"


@dataclass(slots=True)
class FindRequest:
    """A C-FIND (or retrieve) identifier as a QIDO-RS search."""

    model: Model
    level: str
    params: list[tuple[str, str]] = field(default_factory=list)
    return_keys: list[ReturnKey] = field(default_factory=list)
    #: Attributes neither matched nor returned (private or unknown): pending status 0xFF01.
    unsupported: list[int] = field(default_factory=list)

    @property
    def resource(self) -> str:
        """``studies``, ``series`` or ``instances``."""
        return RESOURCES[self.level]

    def matching_value(self, keyword: str) -> str | None:
        """The value of a matching key, if the identifier gave one."""
        return next((value for name, value in self.params if name == keyword), None)


def model_for(sop_class_uid: str) -> Model:
    """The information model of a Q/R SOP Class UID (FIND, MOVE or GET; PS3.4 C.6)."""
    if sop_class_uid.startswith("1.2.840.10008.5.1.4.1.2.1."):
        return Model.PATIENT_ROOT
    if sop_class_uid.startswith("1.2.840.10008.5.1.4.1.2.2."):
        return Model.STUDY_ROOT
    raise InvalidIdentifier(f"unsupported information model {sop_class_uid}")


def find_request(identifier: Dataset, model: Model) -> FindRequest:
    """Translate a C-FIND identifier (PS3.4 C.4.1.1.3.1) to a QIDO-RS search.

    Raises
    ------
    InvalidIdentifier
        No Query/Retrieve Level, a level the model does not have, or an identifier that
        cannot be decoded.
    """
    try:
        elements = list(identifier)
    except Exception as exc:  # deferred decoding of a malformed identifier
        raise InvalidIdentifier(f"cannot decode the identifier: {exc}") from exc
    level = _level(identifier, model)
    request = FindRequest(model, level)
    for element in elements:
        _add(request, element)
    include = [_keyword(key.tag) for key in request.return_keys]
    include = [keyword for keyword in include if keyword not in PATIENT_COUNTS]
    if include:
        request.params.append(("includefield", ",".join(dict.fromkeys(include))))
    return request


def retrieve_request(identifier: Dataset, model: Model) -> FindRequest:
    """A C-MOVE/C-GET identifier (PS3.4 C.4.2.1.4.1, C.4.3.1.3.1) as an instance search.

    Raises
    ------
    InvalidIdentifier
        As :func:`find_request`, or the Unique Key of the level is missing or universal.
    """
    request = find_request(identifier, model)
    unique = UNIQUE_KEYS[request.level]
    value = request.matching_value(unique)
    if value is None or value.strip() in ("", "*"):
        raise InvalidIdentifier(f"a {request.level} retrieve needs {unique}")
    request.params = [(name, value) for name, value in request.params if name != "includefield"]
    request.level = "IMAGE"
    return request


def _level(identifier: Dataset, model: Model) -> str:
    try:
        level = str(identifier.get("QueryRetrieveLevel", "")).strip().upper()
    except Exception as exc:
        raise InvalidIdentifier(f"cannot decode Query/Retrieve Level: {exc}") from exc
    if level not in LEVELS[model]:
        raise InvalidIdentifier(f"Query/Retrieve Level {level[:16]!r} is not one of {model.name}")
    return level


def _add(request: FindRequest, element: DataElement) -> None:
    tag = int(element.tag)
    if tag in _LOCAL:
        return
    keyword = keyword_for_tag(tag)
    if BaseTag(tag).is_private or not keyword or BaseTag(tag).group in (0x0000, 0x0002):
        request.unsupported.append(tag)
        return
    request.return_keys.append(ReturnKey(tag, _vr(element)))
    value = None if keyword in PATIENT_COUNTS else _query_value(element)
    if value:
        request.params.append((keyword, value))


def _vr(element: DataElement) -> str:
    vr = str(element.VR)
    if vr in ("US or SS", "OB or OW", "US or OW", "US or SS or OW"):
        return dictionary_VR(element.tag).split(" or ")[0]
    return vr


def _query_value(element: DataElement) -> str | None:
    """The matching value of an attribute (PS3.4 C.2.2.2), ``None`` for a return key only."""
    if element.VR == "SQ" or element.value is None:
        return None
    value = element.value
    if isinstance(value, bytes | bytearray):
        return None
    if isinstance(value, MultiValue | list | tuple):
        text = "\\".join(str(v) for v in value)
    else:
        text = str(value)
    return text.strip() or None


def _keyword(tag: int) -> str:
    return keyword_for_tag(tag) or f"{tag:08X}"


# -- answers ----------------------------------------------------------------------------------


def response_identifiers(
    request: FindRequest, matches: Sequence[dict[str, Any]], retrieve_ae_title: str
) -> Iterator[Dataset]:
    """The C-FIND response identifiers for QIDO-RS ``matches`` (DICOM JSON, PS3.18 F.2)."""
    rows: Iterable[dict[str, Any]] = matches
    if request.level == "PATIENT":
        rows = patients(matches)
    for row in rows:
        yield to_identifier(request, row, retrieve_ae_title)


def patients(studies: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Group study-level results by Patient ID and Issuer of Patient ID into patient rows,
    with the patient counts (PS3.4 C.6.1.1.2) in DICOM JSON."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for study in studies:
        identity = (_first(study, "00100020"), _first(study, "00100021"))
        groups.setdefault(identity, []).append(study)
    rows = []
    for members in groups.values():
        row = dict(members[0])
        row["00201200"] = _count(len(members))
        row["00201202"] = _count(sum(_int(s, "00201206") for s in members))
        row["00201204"] = _count(sum(_int(s, "00201208") for s in members))
        rows.append(row)
    return rows


def to_identifier(request: FindRequest, row: dict[str, Any], retrieve_ae_title: str) -> Dataset:
    """One response identifier with exactly the requested keys (empty when the centre has no
    value), plus Query/Retrieve Level, Retrieve AE Title and Specific Character Set."""
    wanted = {
        key.hex: row[key.hex]
        for key in request.return_keys
        # large binary values (BulkDataURI, InlineBinary) are not C-FIND return keys
        if key.hex in row and not ({"BulkDataURI", "InlineBinary"} & set(row[key.hex]))
    }
    ds = Dataset.from_json(wanted) if wanted else Dataset()
    for key in request.return_keys:
        if key.tag not in ds:
            ds.add_new(key.tag, key.vr, [] if key.vr == "SQ" else None)
    ds.SpecificCharacterSet = "ISO_IR 192"  # QIDO-RS answers are UTF-8 (PS3.18 §8.7.3.3)
    ds.QueryRetrieveLevel = request.level
    ds.RetrieveAETitle = retrieve_ae_title
    return ds


def _first(item: dict[str, Any], tag: str) -> str:
    values = item.get(tag, {}).get("Value") or [""]
    return str(values[0])


def _int(item: dict[str, Any], tag: str) -> int:
    try:
        return int(_first(item, tag) or 0)
    except ValueError:
        return 0


def _count(value: int) -> dict[str, Any]:
    return {"vr": "IS", "Value": [value]}
