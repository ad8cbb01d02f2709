"""Media type and transfer syntax negotiation for WADO-RS (PS3.18 §8.7).

A pure core: it parses ``Accept`` (RFC 9110 §12.5.1, PS3.18 §8.7.5: the ``accept`` query
parameter, when given, replaces the header) and chooses what to send, without touching storage.

**Instances** (study, series, instance resources; PS3.18 Table 8.7.3-2):
``multipart/related; type="application/dicom"`` with

* ``transfer-syntax=*``: every instance as stored, byte for byte;
* an explicit UID: the stored bytes when they are in that syntax; Explicit VR Little Endian
  (1.2.840.10008.1.2.1) is produced from any stored syntax by decoding; any other syntax
  that some instance is not stored in cannot be produced (no re-compression) → 406;
* no parameter: the RESTful default, Explicit VR Little Endian (PS3.18 §8.7.3), except
  instances stored lossy-compressed, which are sent as stored (the exception §8.7.3 grants
  when "the origin server has only access to the pixel data in lossy compressed form").

Single-part ``application/dicom`` is accepted for an instance resource only (one instance per
payload, PS3.18 §8.6.1); for a study or series it is not acceptable (406).

**Frames and bulk data** (PS3.18 Tables 8.7.3-4, 8.7.3-5): ``application/octet-stream``
(uncompressed, little endian) is the default. With ``transfer-syntax=*`` the server picks:
native frames as stored, compressed frames as their stored bitstream under the media type of
their syntax (``image/jls``, ``image/jp2``, ``image/jpeg``, ``image/dicom-rle``, ``image/jphc``
…), the part's ``Content-Type`` carrying ``transfer-syntax=<UID>`` (what OHIF/cornerstone read
to pick a decoder). An explicit compressed media type is served only for frames stored in one of
its syntaxes. Single-part responses are accepted when exactly one frame is asked for.
"""

from __future__ import annotations

from dataclasses import dataclass
from email.message import Message
from functools import lru_cache

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"
NATIVE_SYNTAXES = frozenset(
    {EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN, DEFLATED, EXPLICIT_VR_BIG_ENDIAN}
)
#: Compressed bulk data media type → the transfer syntaxes it carries (PS3.18 Table 8.7.3-5).
COMPRESSED_MEDIA_TYPES: dict[str, frozenset[str]] = {
    "image/jpeg": frozenset({"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51",
                             "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70"}),
    "image/dicom-rle": frozenset({"1.2.840.10008.1.2.5"}),
    "image/jls": frozenset({"1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"}),
    "image/jp2": frozenset({"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"}),
    "image/jpx": frozenset({"1.2.840.10008.1.2.4.92", "1.2.840.10008.1.2.4.93"}),
    "image/jphc": frozenset({"1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202",
                             "1.2.840.10008.1.2.4.203"}),
    "image/jxl": frozenset({"1.2.840.10008.1.2.4.110", "1.2.840.10008.1.2.4.111",
                            "1.2.840.10008.1.2.4.112"}),
    "video/mpeg": frozenset({"1.2.840.10008.1.2.4.100", "1.2.840.10008.1.2.4.101"}),
    "video/mp4": frozenset({"1.2.840.10008.1.2.4.102", "1.2.840.10008.1.2.4.103",
                            "1.2.840.10008.1.2.4.104", "1.2.840.10008.1.2.4.105",
                            "1.2.840.10008.1.2.4.106", "1.2.840.10008.1.2.4.107",
                            "1.2.840.10008.1.2.4.108"}),
}  # fmt: skip
#: Syntaxes that may be lossy: without a transfer-syntax parameter they are sent as stored.
LOSSY_SYNTAXES = frozenset(
    {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.81",
     "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.93", "1.2.840.10008.1.2.4.203",
     "1.2.840.10008.1.2.4.111", "1.2.840.10008.1.2.4.112"}
    | COMPRESSED_MEDIA_TYPES["video/mpeg"] | COMPRESSED_MEDIA_TYPES["video/mp4"]
)  # fmt: skip
DICOM = "application/dicom"
OCTET_STREAM = "application/octet-stream"
MULTIPART = "multipart/related"
#: At most this many media ranges are read from one Accept value.
MAX_RANGES = 32


class NotAcceptable(Exception):
    """None of the acceptable media types can be produced for this resource (406)."""


@dataclass(frozen=True, slots=True)
class MediaRange:
    """One element of an Accept header: ``multipart/related; type=X`` is kept as X with
    ``multipart`` set; ``transfer_syntax`` is None when absent, ``"*"`` for any."""

    media_type: str
    multipart: bool
    transfer_syntax: str | None
    quality: float


def parse_accept(value: str | None) -> list[MediaRange]:
    """Media ranges of an Accept value, best first (by ``q``, then order); ``*/*`` if empty."""
    text = value or ""
    return list(_ranked_ranges(text)) if len(text) <= 1024 else _parse(text)


@lru_cache(maxsize=256)
def _ranked_ranges(value: str) -> tuple[MediaRange, ...]:
    """:func:`_parse`, remembered: a viewer sends the same few Accept values on every request."""
    return tuple(_parse(value))


def _parse(value: str) -> list[MediaRange]:
    pieces = [p for p in _split_commas(value) if p.strip()][:MAX_RANGES]
    ranges = [_media_range(piece) for piece in pieces] or [MediaRange("*/*", False, None, 1.0)]
    ranked = sorted(enumerate(ranges), key=lambda item: (-item[1].quality, item[0]))
    return [r for _i, r in ranked if r.quality > 0]


def _split_commas(value: str) -> list[str]:
    """Split on commas outside double quotes (a ``type`` parameter may be quoted)."""
    pieces: list[str] = []
    current: list[str] = []
    quoted = False
    for char in value:
        if char == '"':
            quoted = not quoted
        if char == "," and not quoted:
            pieces.append("".join(current))
            current = []
        else:
            current.append(char)
    pieces.append("".join(current))
    return pieces


def _media_range(piece: str) -> MediaRange:
    message = Message()
    message["content-type"] = piece.strip()
    main = piece.strip().split(";", 1)[0].strip().lower()
    params = {k.lower(): v.strip() for k, v in message.get_params(failobj=[])[1:]}
    try:
        quality = min(max(float(params.get("q", "1")), 0.0), 1.0)
    except ValueError:
        quality = 0.0
    syntax = params.get("transfer-syntax")
    if main == MULTIPART:
        inner = params.get("type", "").strip().lower()
        return MediaRange(inner or "*/*", True, syntax, quality)
    if main == "multipart/*":
        return MediaRange("*/*", True, syntax, quality)
    return MediaRange(main, False, syntax, quality)


def _matches(range_type: str, media_type: str) -> bool:
    if range_type in ("*/*", media_type):
        return True
    return range_type.endswith("/*") and media_type.startswith(range_type[:-1])


# --- instances -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InstancePlan:
    """How to send instances: multipart or single part, and the transfer syntax asked for
    (``"*"`` as stored, None the RESTful default, else a UID)."""

    multipart: bool
    transfer_syntax: str | None

    def target(self, stored: str) -> str:
        """The syntax an instance stored in ``stored`` is sent in."""
        if self.transfer_syntax == "*":
            return stored
        if self.transfer_syntax is None:
            return stored if stored in LOSSY_SYNTAXES else EXPLICIT_VR_LITTLE_ENDIAN
        return self.transfer_syntax


def plan_instances(accept: str | None, stored: set[str], single: bool) -> InstancePlan:
    """Choose the representation of instances stored in ``stored`` syntaxes (PS3.18 §8.7.3.5).

    ``single`` is True for an instance resource (the only one that may be single part).
    Raises :class:`NotAcceptable` if no acceptable media range can be produced.
    """
    for media in parse_accept(accept):
        if not _matches(media.media_type, DICOM):
            continue
        multipart = media.multipart or media.media_type != DICOM
        if not multipart and not single:
            continue
        syntax = media.transfer_syntax
        if syntax in (None, "*", EXPLICIT_VR_LITTLE_ENDIAN) or stored == {syntax}:
            return InstancePlan(multipart, syntax)
    raise NotAcceptable(
        'acceptable representations: multipart/related; type="application/dicom" with '
        f"transfer-syntax=* or {EXPLICIT_VR_LITTLE_ENDIAN} (or the stored syntax)"
    )


# --- frames and bulk data ---------------------------------------------------------------------


def media_type_of(transfer_syntax: str) -> str:
    """The bulk data media type of a stored syntax (octet-stream for native ones)."""
    for media_type, syntaxes in COMPRESSED_MEDIA_TYPES.items():
        if transfer_syntax in syntaxes:
            return media_type
    return OCTET_STREAM


@dataclass(frozen=True, slots=True)
class FramePlan:
    """How to send frames: ``decode`` to little-endian native pixels, or the stored bytes;
    ``content_type`` is the part's (or single-part body's) Content-Type."""

    multipart: bool
    decode: bool
    content_type: str


def plan_frames(accept: str | None, stored: str, frame_count: int) -> FramePlan:
    """Choose the representation of ``frame_count`` frames stored in syntax ``stored``.

    Raises :class:`NotAcceptable` if no acceptable media range can be produced.
    """
    native = stored in NATIVE_SYNTAXES
    stored_type = media_type_of(stored)
    for media in parse_accept(accept):
        if media.media_type.endswith("/*"):
            media = MediaRange(media.media_type, True, media.transfer_syntax, media.quality)
        elif not media.multipart and frame_count != 1:
            continue  # a single-part payload holds one frame (PS3.18 §8.6.1)
        plan = _frame_plan(media, stored, native, stored_type)
        if plan is not None:
            return plan
    raise NotAcceptable(
        'acceptable representations: multipart/related; type="application/octet-stream" '
        f"(uncompressed, or with transfer-syntax=*), or {stored_type} for this instance"
    )


def _frame_plan(media: MediaRange, stored: str, native: bool, stored_type: str) -> FramePlan | None:
    syntax = media.transfer_syntax
    uncompressed = f"{OCTET_STREAM}; transfer-syntax={EXPLICIT_VR_LITTLE_ENDIAN}"
    as_stored = f"{stored_type}; transfer-syntax={stored}"
    if media.media_type in ("*/*", OCTET_STREAM, "application/*"):
        if syntax in (None, EXPLICIT_VR_LITTLE_ENDIAN) or (syntax == "*" and native):
            # Native little-endian frames are already what octet-stream means.
            return FramePlan(media.multipart, not _little_native(stored), uncompressed)
        if syntax == "*" or syntax == stored:
            return FramePlan(media.multipart, False, as_stored)
        return None
    if native or not _matches(media.media_type, stored_type):
        return None
    if syntax in (None, "*", stored):
        return FramePlan(media.multipart, False, as_stored)
    return None


def _little_native(stored: str) -> bool:
    return stored in (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN)


def wants_json(accept: str | None) -> bool:
    """Whether ``application/dicom+json`` (the metadata default) is acceptable (PS3.18
    Table 8.7.3-3; ``application/json`` is taken as the same)."""
    return any(
        not media.multipart
        and any(
            _matches(media.media_type, t) for t in ("application/dicom+json", "application/json")
        )
        for media in parse_accept(accept)
    )
