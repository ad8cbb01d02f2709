"""The encoders of rendered images (pure: no server)."""

from __future__ import annotations

import io
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image

from telerad.viewer_api.rendering.images import GIF, JPEG, PNG, encode


def _slice(shape: tuple[int, ...]) -> np.ndarray:
    """A smooth 8-bit image with some noise, like a windowed CT slice."""
    rng = np.random.default_rng(7)
    rows, columns = shape[:2]
    y, x = np.mgrid[0:rows, 0:columns]
    grey = 128 + 100 * np.sin(x / 9) * np.cos(y / 13) + rng.normal(0, 6, (rows, columns))
    if len(shape) == 3:
        grey = np.stack([grey, grey[::-1], 255 - grey], axis=-1)
    return grey.clip(0, 255).astype(np.uint8)


@pytest.mark.parametrize("shape", [(96, 80), (64, 72, 3)], ids=["grey", "rgb"])
@pytest.mark.parametrize("quality", [1, 50, 90, 100])
def test_jpeg_is_exactly_what_pillow_writes(shape: tuple[int, ...], quality: int) -> None:
    """imagecodecs and Pillow drive the same libjpeg-turbo with the same settings, so the
    encoder chosen for its speed changes no byte of a rendered JPEG."""
    image = Image.fromarray(_slice(shape))
    reference = io.BytesIO()
    image.save(reference, "JPEG", quality=quality)

    assert encode(image, JPEG, quality) == reference.getvalue()


def test_jpeg_encoding_leaves_other_threads_running() -> None:
    """The JPEG encoder releases the GIL while it encodes (Pillow's holds it).

    With a switch interval of 5 s no thread is made to give up the GIL on time; it passes
    only when it blocks or a C function releases it. So while another thread encodes large
    images one after the other, this thread (which yields at every turn) gets to run during
    the encodes only if the encoder releases the GIL; with Pillow it gets nothing until the
    other thread has finished. Independent of the machine's speed and load."""
    image = Image.fromarray(_slice((1024, 1024)))
    encode(image, JPEG, 90)
    started, done, turns = threading.Event(), threading.Event(), 0

    def encode_some() -> None:
        started.set()
        for _ in range(8):
            encode(image, JPEG, 90)
        done.set()

    interval = sys.getswitchinterval()
    sys.setswitchinterval(5.0)
    try:
        worker = threading.Thread(target=encode_some)
        worker.start()
        started.wait(10)
        while not done.is_set():
            turns += 1
            time.sleep(0)  # hand the GIL over, if the encoder thread wants it
        worker.join()
    finally:
        sys.setswitchinterval(interval)
    assert turns > 20, turns


@pytest.mark.parametrize("media_type", [PNG, GIF])
def test_lossless_encodings_round_trip(media_type: str) -> None:
    pixels = _slice((40, 56))
    decoded = Image.open(io.BytesIO(encode(Image.fromarray(pixels), media_type, 90)))
    assert np.array_equal(np.asarray(decoded.convert("L")), pixels)
