"""The pure display pipeline against references written here, pixel by pixel, from the PS3.3
formulas (C.11.1 Modality LUT, C.11.2.1.2 LINEAR, C.11.2.1.3 LINEAR_EXACT and SIGMOID)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pydicom.pixels.processing import convert_color_space

from telerad.viewer_api.rendering.windowing import (
    PRESETS,
    Rescale,
    StoredLayout,
    VoiFunction,
    Window,
    WindowError,
    full_range_window,
    parse_window,
    render_colour,
    render_monochrome,
)

RNG = np.random.default_rng(20240601)


# --- independent references: one scalar at a time, straight from the standard --------------


def stored(code: int, bits_allocated: int, bits_stored: int, signed: bool) -> int:
    """The stored value of a raw cell: the low Bits Stored bits, two's complement if signed."""
    unsigned = code % (1 << bits_allocated)
    value = unsigned % (1 << bits_stored)
    if signed and value >= 1 << (bits_stored - 1):
        value -= 1 << bits_stored
    return value


def voi(x: float, c: float, w: float, function: str) -> float:
    ymin, ymax = 0.0, 255.0
    if function == "LINEAR":
        if x <= c - 0.5 - (w - 1) / 2:
            return ymin
        if x > c - 0.5 + (w - 1) / 2:
            return ymax
        return ((x - (c - 0.5)) / (w - 1) + 0.5) * (ymax - ymin) + ymin
    if function == "LINEAR_EXACT":
        if x <= c - w / 2:
            return ymin
        if x > c + w / 2:
            return ymax
        return ((x - c) / w + 0.5) * (ymax - ymin) + ymin
    exponent = -4 * (x - c) / w
    if exponent > 700:  # math.exp would overflow: the sigmoid is ymin there
        return ymin
    return (ymax - ymin) / (1 + math.exp(exponent)) + ymin


def reference(
    codes: np.ndarray,
    *,
    bits_allocated: int,
    bits_stored: int,
    signed: bool,
    slope: float,
    intercept: float,
    window: tuple[float, float, str] | None,
    invert: bool = False,
) -> np.ndarray:
    values = [
        stored(int(code), bits_allocated, bits_stored, signed) * slope + intercept
        for code in codes.ravel()
    ]
    if window is None:  # full range: lowest value black, highest white
        lo, hi = min(values), max(values)
        window = ((lo + hi + 1) / 2, hi - lo + 1, "LINEAR")
    c, w, function = window
    out = []
    for x in values:
        y = math.floor(voi(x, c, w, function) + 0.5)
        out.append(255 - y if invert else y)
    return np.array(out, dtype=np.int64).reshape(codes.shape)


def render(codes: np.ndarray, **kw: object) -> np.ndarray:
    window = kw["window"]
    return render_monochrome(
        codes,
        StoredLayout(int(kw["bits_stored"]), 1 if kw["signed"] else 0),  # type: ignore[call-overload]
        Rescale(float(kw["slope"]), float(kw["intercept"])),  # type: ignore[arg-type]
        None if window is None else Window(window[0], window[1], VoiFunction(window[2])),  # type: ignore[index]
        invert=bool(kw.get("invert", False)),
    ).astype(np.int64)


# --- VOI functions, rescale, inversion --------------------------------------------------------

CT = {"bits_allocated": 16, "bits_stored": 16, "signed": True, "slope": 1.0, "intercept": -1024.0}


@pytest.mark.parametrize(
    "window",
    [
        (40.0, 400.0, "LINEAR"),
        (40.0, 400.0, "LINEAR_EXACT"),
        (40.0, 400.0, "SIGMOID"),
        (-600.0, 1500.0, "LINEAR"),
        (0.5, 1.0, "LINEAR"),  # the narrowest LINEAR window: a threshold
        (10.25, 0.5, "LINEAR_EXACT"),  # below one unit wide
        (100.0, 2.0, "SIGMOID"),
        (1000.0, 4000.0, "LINEAR"),
    ],
)
def test_each_voi_function_matches_the_standard(window: tuple[float, float, str]) -> None:
    codes = RNG.integers(-2048, 4096, size=(24, 40)).astype(np.int16)
    # the exact edges of the window too
    edges = [window[0] - window[1] / 2 + d + 1024 for d in (-1, -0.5, 0, 0.5, 1)]
    codes[0, :5] = np.round(edges).astype(np.int16)

    assert np.array_equal(render(codes, **CT, window=window), reference(codes, **CT, window=window))


@pytest.mark.parametrize(
    ("slope", "intercept"),
    [(1.0, 0.0), (1.0, -1024.0), (2.0, -2048.0), (0.5, 10.0), (-1.0, 100.0), (0.001, 0.0)],
)
@pytest.mark.parametrize("window", [(50.0, 350.0, "LINEAR"), None])
def test_modality_lut_comes_before_the_window(
    slope: float, intercept: float, window: tuple[float, float, str] | None
) -> None:
    codes = RNG.integers(0, 4096, size=(16, 16)).astype(np.uint16)
    kw = {"bits_allocated": 16, "bits_stored": 12, "signed": False}

    got = render(codes, **kw, slope=slope, intercept=intercept, window=window)

    ref = reference(codes, **kw, slope=slope, intercept=intercept, window=window)
    assert np.array_equal(got, ref)


def test_monochrome1_is_inverted() -> None:
    codes = RNG.integers(0, 4096, size=(16, 16)).astype(np.uint16)
    kw = {"bits_allocated": 16, "bits_stored": 12, "signed": False, "slope": 1.0, "intercept": 0.0}
    window = (2000.0, 3000.0, "LINEAR")

    inverted = render(codes, **kw, window=window, invert=True)

    assert np.array_equal(inverted, reference(codes, **kw, window=window, invert=True))
    assert np.array_equal(inverted, 255 - render(codes, **kw, window=window))


# --- stored values: bit depths, sign, unused high bits ---------------------------------------


@pytest.mark.parametrize(
    ("dtype", "bits_allocated", "bits_stored", "signed"),
    [
        (np.uint8, 8, 8, False),
        (np.uint8, 8, 6, False),
        (np.int8, 8, 8, True),
        (np.uint16, 16, 16, False),
        (np.uint16, 16, 12, False),  # high bits hold garbage (an overlay, say): masked off
        (np.uint16, 16, 10, False),
        (np.int16, 16, 16, True),
        (np.int16, 16, 12, True),  # sign-extended from bit 11
        (np.uint16, 16, 12, True),  # a decoder that returns unsigned cells for signed data
        (np.uint32, 32, 32, False),
        (np.int32, 32, 20, True),
    ],
)
@pytest.mark.parametrize("window", [(100.0, 300.0, "LINEAR"), None])
def test_signed_unsigned_and_bit_depths(
    dtype: type, bits_allocated: int, bits_stored: int, signed: bool, window: object
) -> None:
    info = np.iinfo(dtype)
    codes = RNG.integers(info.min, int(info.max) + 1, size=(12, 20), dtype=np.int64).astype(dtype)
    kw = {
        "bits_allocated": bits_allocated,
        "bits_stored": bits_stored,
        "signed": signed,
        "slope": 1.0,
        "intercept": 0.0,
    }

    assert np.array_equal(render(codes, **kw, window=window), reference(codes, **kw, window=window))


def test_float_pixels_are_windowed_directly() -> None:
    pixels = RNG.normal(0.0, 300.0, size=(20, 20)).astype(np.float32)

    got = render_monochrome(pixels, StoredLayout(32), Rescale(1.0, 5.0), Window(0, 500))

    ref = [math.floor(voi(float(v) + 5.0, 0, 500, "LINEAR") + 0.5) for v in pixels.ravel()]
    assert np.abs(got.astype(int).ravel() - np.array(ref)).max() <= 1  # float32 input rounding


def test_full_range_window_spans_the_frame() -> None:
    codes = np.array([[100, 200], [300, 400]], dtype=np.uint16)

    got = render_monochrome(codes, StoredLayout(16), Rescale(), None)

    assert got.min() == 0 and got.max() == 255
    assert full_range_window(100, 400) == Window(250.5, 301)


def test_a_flat_frame_is_black_not_an_error() -> None:
    flat = np.full((4, 4), 7, dtype=np.int16)
    got = render_monochrome(flat, StoredLayout(16, 1), Rescale(), None)
    assert np.all(got == 0)


# --- windows: parsing, presets, validation ----------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("40,400", Window(40, 400)),
        ("40,400,linear", Window(40, 400)),
        ("-600,1500,LINEAR_EXACT", Window(-600, 1500, VoiFunction.LINEAR_EXACT)),
        ("1.5e2, 3.0e2 , linear-exact", Window(150, 300, VoiFunction.LINEAR_EXACT)),
        ("40,400,Sigmoid", Window(40, 400, VoiFunction.SIGMOID)),
        ("lung", Window(-600, 1500)),
        ("Bone", Window(400, 1800)),
    ],
)
def test_window_text(text: str, expected: Window) -> None:
    assert parse_window(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "", "40", "40,", "a,b", "40,400,cubic", "40,400,linear,4", "nan,400", "40,inf",
        "40,0.5,linear", "40,0,sigmoid", "40,-3,linear-exact", "1e999,10", "spleen",
    ],
)  # fmt: skip
def test_malformed_windows_are_refused(text: str) -> None:
    with pytest.raises(WindowError):
        parse_window(text)


@pytest.mark.parametrize(
    ("name", "center", "width"),
    [
        ("lung", -600, 1500),
        ("mediastinum", 50, 350),
        ("bone", 400, 1800),
        ("brain", 40, 80),
        ("abdomen", 50, 400),
        ("liver", 30, 150),
    ],
)
def test_presets_are_the_usual_ct_windows(name: str, center: float, width: float) -> None:
    assert PRESETS[name] == Window(center, width)
    hu = np.arange(-1100, 2000, 7, dtype=np.int16).reshape(1, -1)
    got = render_monochrome(hu, StoredLayout(16, 1), Rescale(), PRESETS[name]).astype(int)
    kw = {"bits_allocated": 16, "bits_stored": 16, "signed": True, "slope": 1.0, "intercept": 0.0}
    assert np.array_equal(got, reference(hu, **kw, window=(center, width, "LINEAR")))


# --- colour ---------------------------------------------------------------------------------


def test_rgb_passes_through() -> None:
    rgb = RNG.integers(0, 256, size=(8, 8, 3)).astype(np.uint8)
    assert np.array_equal(render_colour(rgb, 8), rgb)


def test_16_bit_rgb_keeps_its_top_8_bits() -> None:
    rgb = RNG.integers(0, 1 << 12, size=(8, 8, 3)).astype(np.uint16)
    assert np.array_equal(render_colour(rgb, 12), (rgb >> 4).astype(np.uint8))


def test_ybr_full_is_converted_to_rgb() -> None:
    ybr = RNG.integers(0, 256, size=(16, 16, 3)).astype(np.uint8)

    got = render_colour(ybr, 8, "YBR_FULL").astype(int)

    expected = convert_color_space(ybr, "YBR_FULL", "RGB").astype(int)  # pydicom's own
    assert np.abs(got - expected).max() <= 1
