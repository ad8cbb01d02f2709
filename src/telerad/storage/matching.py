"""Query keys of QIDO-RS and C-FIND, parsed into match criteria (pure: no SQL, no HTTP).

Matching follows PS3.4 §C.2.2.2: Single Value, Universal (empty value: return only), Wildcard
(``*`` and ``?``), Range (``DA``/``TM``/``DT`` values ``a-b``, ``-b``, ``a-``) and List of UID
matching. QIDO-RS adds the query parameters of PS3.18 §8.3.4 (``limit``, ``offset``,
``includefield``, ``fuzzymatching``), whose values arrive percent-decoded.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword


class QueryError(ValueError):
    """A query key or value that cannot be understood (HTTP 400, C-FIND 0xA900)."""


class MatchKind(enum.Enum):
    """The matching types of PS3.4 §C.2.2.2."""

    UNIVERSAL = "universal"
    SINGLE = "single"
    WILDCARD = "wildcard"
    RANGE = "range"
    UID_LIST = "uid-list"


@dataclass(frozen=True, slots=True)
class Criterion:
    """One attribute's match: ``values`` is one value, a (low, high) pair, or a UID list."""

    keyword: str
    vr: str
    kind: MatchKind
    values: tuple[str, ...]


@dataclass(slots=True)
class Query:
    """A parsed search request."""

    criteria: list[Criterion] = field(default_factory=list)
    include_fields: list[str] = field(default_factory=list)
    include_all: bool = False
    limit: int | None = None
    offset: int = 0
    fuzzy: bool = False


RESERVED = {"limit", "offset", "includefield", "fuzzymatching"}
RANGE_VRS = {"DA", "TM", "DT"}
_TAG_RE = re.compile(r"[0-9A-Fa-f]{8}")
MAX_LIMIT = 10_000


def attribute_keyword(name: str) -> str:
    """The DICOM keyword for ``name``, given as a keyword or an 8-hex-digit tag."""
    if _TAG_RE.fullmatch(name):
        keyword = keyword_for_tag(int(name, 16))
        if keyword:
            return keyword
    elif tag_for_keyword(name) is not None:
        return name
    raise QueryError(f"unknown attribute {name[:64]!r}")


def criterion(keyword: str, value: str) -> Criterion:
    """Classify ``value`` for ``keyword`` into one of the PS3.4 matching types."""
    tag = tag_for_keyword(keyword)
    vr = dictionary_VR(tag) if tag is not None else "LO"
    value = value.strip()
    if value in ("", "*"):
        return Criterion(keyword, vr, MatchKind.UNIVERSAL, ())
    if vr == "UI":
        uids = tuple(v for v in re.split(r"[\\,]", value) if v)
        kind = MatchKind.UID_LIST if len(uids) > 1 else MatchKind.SINGLE
        return Criterion(keyword, vr, kind, uids)
    if vr in RANGE_VRS and "-" in value:
        low, _, high = value.partition("-")
        if not (low or high):
            raise QueryError(f"empty range for {keyword}")
        return Criterion(keyword, vr, MatchKind.RANGE, (low.strip(), high.strip()))
    if "*" in value or "?" in value:
        return Criterion(keyword, vr, MatchKind.WILDCARD, (value,))
    return Criterion(keyword, vr, MatchKind.SINGLE, (value,))


def parse_query(params: list[tuple[str, str]]) -> Query:
    """Parse QIDO-RS query parameters (already percent-decoded), in request order.

    ``includefield`` may repeat and may hold a comma list; ``includefield=all`` asks for every
    available attribute. Repeated matching keys are an error (PS3.18 §8.3.4.1).
    """
    query = Query()
    seen: set[str] = set()
    for name, value in params:
        if name in RESERVED:
            _reserved(query, name, value)
            continue
        keyword = attribute_keyword(name)
        if keyword in seen:
            raise QueryError(f"{keyword} given more than once")
        seen.add(keyword)
        query.criteria.append(criterion(keyword, value))
    return query


def _reserved(query: Query, name: str, value: str) -> None:
    if name == "includefield":
        for item in filter(None, (v.strip() for v in value.split(","))):
            if item == "all":
                query.include_all = True
            else:
                query.include_fields.append(attribute_keyword(item))
    elif name == "fuzzymatching":
        if value not in ("true", "false"):
            raise QueryError("fuzzymatching must be true or false")
        query.fuzzy = value == "true"
    else:
        number = _non_negative(name, value)
        if name == "limit":
            query.limit = min(number, MAX_LIMIT)
        else:
            query.offset = number


def _non_negative(name: str, value: str) -> int:
    if not value.isdigit():
        raise QueryError(f"{name} must be a non-negative integer")
    return int(value)


def like_pattern(value: str) -> str:
    """Translate a DICOM wildcard value to an SQL LIKE pattern with ``\\`` as escape."""
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def person_name_groups(value: str) -> tuple[str, ...]:
    """Split a PN query value into its component groups (alphabetic, ideographic, phonetic)."""
    return tuple(value.split("=")[:3])
