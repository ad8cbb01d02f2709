"""The rendering attributes of an instance, read from its DICOM JSON (PS3.18 Annex F).

Pure. For a frame of an enhanced multi-frame instance, the Pixel Value Transformation (Rescale)
and Frame VOI LUT (window) macros are looked up in the frame's Per-Frame Functional Groups
(5200,9230) item, then in the Shared Functional Groups (5200,9229), then at the top level
(PS3.3 C.7.6.16). Values that are missing or malformed fall back to the identity Modality LUT and
to "no window in the file"; the renderer is tolerant of what it received.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from telerad.viewer_api.rendering.windowing import Rescale, VoiFunction, Window, WindowError

__all__ = ["file_rescale", "file_window", "photometric", "sop_class"]

PER_FRAME = "52009230"
SHARED = "52009229"
PIXEL_VALUE_TRANSFORMATION = "00289145"
FRAME_VOI_LUT = "00289132"
RESCALE_INTERCEPT = "00281052"
RESCALE_SLOPE = "00281053"
WINDOW_CENTER = "00281050"
WINDOW_WIDTH = "00281051"
VOI_LUT_FUNCTION = "00281056"
PHOTOMETRIC = "00280004"
SOP_CLASS = "00080016"


def _values(element: Any) -> list[Any]:
    if not isinstance(element, dict):
        return []
    values = element.get("Value")
    return values if isinstance(values, list) else []


def _first_item(element: Any) -> dict[str, Any] | None:
    items = _values(element)
    return items[0] if items and isinstance(items[0], dict) else None


def _scopes(metadata: dict[str, Any], frame: int, macro: str) -> Iterator[dict[str, Any]]:
    """The datasets that may hold ``macro``'s attributes, most specific first."""
    per_frame = _values(metadata.get(PER_FRAME))
    if 1 <= frame <= len(per_frame) and isinstance(per_frame[frame - 1], dict):
        item = _first_item(per_frame[frame - 1].get(macro))
        if item is not None:
            yield item
    shared = _first_item(metadata.get(SHARED))
    if shared is not None:
        item = _first_item(shared.get(macro))
        if item is not None:
            yield item
    yield metadata


def _number(dataset: dict[str, Any], tag: str) -> float | None:
    values = _values(dataset.get(tag))
    if not values:
        return None
    try:
        number = float(values[0])
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _text(dataset: dict[str, Any], tag: str) -> str:
    values = _values(dataset.get(tag))
    return str(values[0]).strip().upper() if values and values[0] is not None else ""


def file_rescale(metadata: dict[str, Any], frame: int = 1) -> Rescale:
    """The Modality LUT of ``frame`` (PS3.3 C.11.1); identity when absent."""
    for dataset in _scopes(metadata, frame, PIXEL_VALUE_TRANSFORMATION):
        slope = _number(dataset, RESCALE_SLOPE)
        intercept = _number(dataset, RESCALE_INTERCEPT)
        if slope is not None or intercept is not None:
            return Rescale(1.0 if slope is None else slope, intercept or 0.0)
    return Rescale()


def file_window(metadata: dict[str, Any], frame: int = 1) -> Window | None:
    """The first Window Center/Width pair of ``frame`` with its VOI LUT Function (PS3.3
    C.11.2), or None when the file has no usable one."""
    for dataset in _scopes(metadata, frame, FRAME_VOI_LUT):
        center = _number(dataset, WINDOW_CENTER)
        width = _number(dataset, WINDOW_WIDTH)
        if center is None or width is None:
            continue
        name = _text(dataset, VOI_LUT_FUNCTION) or VoiFunction.LINEAR.value
        function = VoiFunction(name) if name in VoiFunction.__members__ else VoiFunction.LINEAR
        try:
            return Window(center, width, function)
        except WindowError:
            return None
    return None


def photometric(metadata: dict[str, Any]) -> str:
    """Photometric Interpretation (0028,0004), upper case; '' when absent."""
    return _text(metadata, PHOTOMETRIC)


def sop_class(metadata: dict[str, Any]) -> str:
    """SOP Class UID (0008,0016); '' when absent."""
    return _text(metadata, SOP_CLASS)
