"""From stored pixel values to 8-bit display values: the grayscale and colour pipeline.

Pure (numpy only). A monochrome frame goes through, in order:

1. the stored value: Bits Stored of Bits Allocated, the unused high bits masked off (unsigned)
   or the value sign-extended from its high bit (Pixel Representation 1), as pydicom does;
2. the Modality LUT: ``slope * stored + intercept`` (Rescale Slope/Intercept, PS3.3 C.11.1);
3. the VOI LUT: a window (PS3.3 C.11.2.1.2), with the functions LINEAR, LINEAR_EXACT and SIGMOID
   of its VOI LUT Function (PS3.3 C.11.2.1.3) mapping to 0..255;
4. MONOCHROME1 is inverted (its minimum is white, PS3.3 C.7.6.3.1.2).

For 8- and 16-bit integer data the four steps are folded into one ``uint8`` lookup table indexed
by the raw code (256 or 65 536 entries), so a frame costs one table lookup per pixel. Other data
(32-bit, float) is transformed directly in float64. Display values are rounded half up.

When no window is asked and the file has none, the window spans the frame's own minimum to
maximum (after the Modality LUT), so every frame shows its full dynamic range.

Colour frames (RGB, or YBR_FULL converted with PS3.3 C.7.6.3.1.2) pass through, scaled to 8
bits when stored with more.

Named windows (a telerad extension, ``window=lung``) are the usual CT presets in Hounsfield
units, see :data:`PRESETS`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "PRESETS",
    "Rescale",
    "StoredLayout",
    "VoiFunction",
    "Window",
    "WindowError",
    "apply_voi",
    "full_range_window",
    "parse_window",
    "render_colour",
    "render_monochrome",
    "stored_values",
    "ybr_full_to_rgb",
]

#: Largest display value (8-bit output); the smallest is 0.
Y_MAX = 255.0


class WindowError(ValueError):
    """A window that cannot be applied: malformed text, unknown function or preset, bad width."""


class VoiFunction(StrEnum):
    """VOI LUT Function (0028,1056), PS3.3 C.11.2.1.3."""

    LINEAR = "LINEAR"
    LINEAR_EXACT = "LINEAR_EXACT"
    SIGMOID = "SIGMOID"


@dataclass(frozen=True, slots=True)
class Window:
    """A VOI window: center and width in modality units, and its function.

    Raises :class:`WindowError` for a non-finite value, a LINEAR width below 1 or another
    function's width not above 0 (PS3.3 C.11.2.1.2.1, C.11.2.1.3).
    """

    center: float
    width: float
    function: VoiFunction = VoiFunction.LINEAR

    def __post_init__(self) -> None:
        if not (math.isfinite(self.center) and math.isfinite(self.width)):
            raise WindowError("window center and width must be finite numbers")
        if self.function is VoiFunction.LINEAR and self.width < 1:
            raise WindowError("a LINEAR window needs a width of at least 1 (PS3.3 C.11.2.1.2)")
        if self.width <= 0:
            raise WindowError(f"a {self.function} window needs a width above 0")


#: CT presets (center, width in HU), after the values radiology teaching uses (Radiopaedia,
#: "Windowing (CT)"): lung L-600/W1500, mediastinum L50/W350, bone L400/W1800, brain L40/W80,
#: abdomen (soft tissue) L50/W400, liver L30/W150.
PRESETS: dict[str, Window] = {
    "lung": Window(-600, 1500),
    "mediastinum": Window(50, 350),
    "bone": Window(400, 1800),
    "brain": Window(40, 80),
    "abdomen": Window(50, 400),
    "liver": Window(30, 150),
}

_FUNCTION_NAMES = {
    "linear": VoiFunction.LINEAR,
    "linear-exact": VoiFunction.LINEAR_EXACT,
    "linear_exact": VoiFunction.LINEAR_EXACT,
    "sigmoid": VoiFunction.SIGMOID,
}


def parse_window(text: str) -> Window:
    """A window from PS3.18 §8.3.5.1.4 ``center,width,function`` text, or a preset name.

    The function is ``linear``, ``linear-exact`` or ``sigmoid`` (any case; the PS3.3 spellings
    ``LINEAR_EXACT`` too) and may be left out (LINEAR). ``lung``, ``bone``… name a
    :data:`PRESETS` window. Raises :class:`WindowError` otherwise.
    """
    value = text.strip()
    preset = PRESETS.get(value.lower())
    if preset is not None:
        return preset
    parts = [part.strip() for part in value.split(",")]
    if len(parts) not in (2, 3):
        names = ", ".join(PRESETS)
        raise WindowError(f"window must be center,width[,function] or one of {names}")
    center, width = _number(parts[0], "center"), _number(parts[1], "width")
    function = VoiFunction.LINEAR
    if len(parts) == 3:
        found = _FUNCTION_NAMES.get(parts[2].lower())
        if found is None:
            raise WindowError("window function must be linear, linear-exact or sigmoid")
        function = found
    return Window(center, width, function)


def _number(text: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise WindowError(f"window {name} is not a number") from None
    if not math.isfinite(value):
        raise WindowError(f"window {name} must be finite")
    return value


@dataclass(frozen=True, slots=True)
class Rescale:
    """The Modality LUT as Rescale Slope (0028,1053) and Intercept (0028,1052), PS3.3 C.11.1."""

    slope: float = 1.0
    intercept: float = 0.0


@dataclass(frozen=True, slots=True)
class StoredLayout:
    """How stored values sit in their cells (PS3.3 C.7.6.3: Bits Stored, Pixel Representation)."""

    bits_stored: int
    pixel_representation: int = 0


def stored_values(codes: npt.NDArray[np.generic], layout: StoredLayout) -> npt.NDArray[np.int64]:
    """The stored values of integer ``codes``: high bits above Bits Stored masked off, or the
    value sign-extended from bit Bits Stored - 1 when Pixel Representation is 1."""
    bits = layout.bits_stored
    values = codes.astype(np.int64) & ((1 << bits) - 1)
    if layout.pixel_representation == 1:
        sign = 1 << (bits - 1)
        values = (values ^ sign) - sign
    return values


def apply_voi(values: npt.NDArray[np.float64], window: Window) -> npt.NDArray[np.float64]:
    """Display values 0..255 of modality ``values`` through ``window`` (PS3.3 C.11.2.1.2.1
    LINEAR, C.11.2.1.3.2 LINEAR_EXACT, C.11.2.1.3.1 SIGMOID)."""
    c, w = window.center, window.width
    if window.function is VoiFunction.SIGMOID:
        exponent = np.clip(-4.0 * (values - c) / w, -700.0, 700.0)  # exp() stays finite
        return Y_MAX / (1.0 + np.exp(exponent))
    if window.function is VoiFunction.LINEAR_EXACT:
        low, high = c - w / 2, c + w / 2
        ramp = ((values - c) / w + 0.5) * Y_MAX
    else:
        low, high = c - 0.5 - (w - 1) / 2, c - 0.5 + (w - 1) / 2
        ramp = ((values - (c - 0.5)) / max(w - 1, 1e-12) + 0.5) * Y_MAX
    return np.where(values <= low, 0.0, np.where(values > high, Y_MAX, ramp))


def full_range_window(lowest: float, highest: float) -> Window:
    """The LINEAR window that maps ``lowest`` to 0 and ``highest`` to 255 (a flat frame to 0)."""
    return Window(center=(lowest + highest + 1) / 2, width=highest - lowest + 1)


def _to_display(values: npt.NDArray[np.float64], invert: bool) -> npt.NDArray[np.uint8]:
    display = np.floor(np.clip(values, 0.0, Y_MAX) + 0.5)
    if invert:
        display = Y_MAX - display
    return display.astype(np.uint8)


def render_monochrome(
    pixels: npt.NDArray[np.generic],
    layout: StoredLayout,
    rescale: Rescale,
    window: Window | None,
    *,
    invert: bool = False,
) -> npt.NDArray[np.uint8]:
    """8-bit display values of a monochrome frame (the module docstring's pipeline).

    ``window`` None means the frame's full range. ``invert`` is True for MONOCHROME1.
    """
    if pixels.dtype.kind in "iu" and not 1 <= layout.bits_stored <= 8 * pixels.dtype.itemsize:
        layout = StoredLayout(8 * pixels.dtype.itemsize, layout.pixel_representation)
    if pixels.dtype.kind in "iu" and pixels.dtype.itemsize <= 2:
        codes: npt.NDArray[np.unsignedinteger[Any]] = pixels.view(
            np.uint8 if pixels.dtype.itemsize == 1 else np.uint16
        )
        if window is None:
            window = _frame_window(pixels, layout, rescale)
        table = _display_table(pixels.dtype.str, layout, rescale, window, invert)
        return np.take(table, codes, mode="clip")  # every code is in range; clip is fastest
    values: npt.NDArray[np.float64] = (
        stored_values(pixels, layout).astype(np.float64)
        if pixels.dtype.kind in "iu"
        else pixels.astype(np.float64)
    )
    modality = values * rescale.slope + rescale.intercept
    if window is None:
        window = _range_window(modality)
    return _to_display(apply_voi(modality, window), invert)


def _frame_window(
    pixels: npt.NDArray[np.generic], layout: StoredLayout, rescale: Rescale
) -> Window:
    """The full-range window of an integer frame, in modality units."""
    native = layout.bits_stored == pixels.dtype.itemsize * 8 and (
        (pixels.dtype.kind == "i") == (layout.pixel_representation == 1)
    )
    values: npt.NDArray[Any] = pixels if native else stored_values(pixels, layout)
    ends = np.array([values.min(), values.max()], dtype=np.float64)
    return _range_window(ends * rescale.slope + rescale.intercept)


def _range_window(modality: npt.NDArray[np.float64]) -> Window:
    finite = modality[np.isfinite(modality)]
    if finite.size == 0:
        return Window(0.0, 1.0)
    return full_range_window(float(finite.min()), float(finite.max()))


@lru_cache(maxsize=64)
def _display_table(
    dtype: str, layout: StoredLayout, rescale: Rescale, window: Window, invert: bool
) -> npt.NDArray[np.uint8]:
    """The uint8 display value of every raw code of ``dtype`` (256 or 65 536 entries)."""
    kind = np.dtype(dtype)
    unsigned = np.uint8 if kind.itemsize == 1 else np.uint16
    codes = np.arange(1 << (8 * kind.itemsize), dtype=np.int64).astype(unsigned).view(kind)
    values = stored_values(codes, layout).astype(np.float64)
    modality: npt.NDArray[np.float64] = values * rescale.slope + rescale.intercept
    table = _to_display(apply_voi(modality, window), invert)
    table.flags.writeable = False
    return table


def ybr_full_to_rgb(pixels: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """RGB of 8-bit YBR_FULL samples (PS3.3 C.7.6.3.1.2, the full-range ITU-R BT.601 matrix)."""
    ybr = pixels.astype(np.float64)
    y, cb, cr = ybr[..., 0], ybr[..., 1] - 128.0, ybr[..., 2] - 128.0
    rgb = np.stack((y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb), axis=-1)
    return np.floor(np.clip(rgb, 0.0, Y_MAX) + 0.5).astype(np.uint8)


def render_colour(
    pixels: npt.NDArray[np.generic], bits_stored: int, photometric: str = "RGB"
) -> npt.NDArray[np.uint8]:
    """8-bit RGB of a 3-sample frame: RGB passes through (more than 8 bits are shifted down to
    the top 8 of Bits Stored); YBR_FULL is converted to RGB."""
    if pixels.dtype != np.uint8 or bits_stored > 8:
        shift = max(bits_stored - 8, 0)
        pixels = np.clip(pixels.astype(np.int64) >> shift, 0, 255).astype(np.uint8)
    rgb = np.ascontiguousarray(pixels[..., :3], dtype=np.uint8)
    if photometric == "YBR_FULL":
        return ybr_full_to_rgb(rgb)
    return rgb
