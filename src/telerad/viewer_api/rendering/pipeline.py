"""Rendering stored frames: read, decode, window, scale, encode — cached, with prefetch.

The I/O shell around the pure core (:mod:`.windowing`, :mod:`.images`). One rendered request
costs one byte-range read of its frame (:func:`telerad.storage.read_frame`), a decode
(``np.frombuffer`` for native 8/16-bit monochrome frames, :func:`..pixels.decode_frame`
otherwise), one lookup-table pass, an optional resize and the encoder; encoded images and the
frames that were costly to decode are kept in one :class:`~.cache.ByteCache`.

A native frame located by byte range is not kept decoded: reading it again from the object
store (the page cache, for the filesystem store) takes about 0.07 ms for a 512 x 512 CT slice,
while holding it takes 512 KiB of the cache (thirteen rendered slices' worth) and a fresh
allocation that must be faulted in for every new slice: 1.3 to 1.6 ms per slice measured on
this project's machines right after start-up, when the memory is new to the process. Compressed
frames and frames decoded from the whole object are kept.

Instances whose frames cannot be located by byte range (deflated or big-endian transfer
syntaxes, bit-packed 1-bit frames) and PALETTE COLOR images (their LUTs are bulk data the
metadata does not carry) are decoded from the whole object with pydicom instead
(:func:`..pixels.decode_object_frame`); a palette image becomes RGB through its LUTs (PS3.3
C.7.6.3.1.5), shown with the top 8 bits of the LUT entries.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.pixels.processing import apply_color_lut

from telerad.settings import RenderingSettings
from telerad.storage import FrameNotFound, ObjectStore, StoredInstance, read_frame
from telerad.viewer_api.pixels import (
    CorruptFrame,
    NotAnImage,
    PixelDescription,
    decode_frame,
    decode_object_frame,
)
from telerad.viewer_api.rendering import attributes
from telerad.viewer_api.rendering.cache import ByteCache, Prefetcher
from telerad.viewer_api.rendering.images import (
    GIF,
    Viewport,
    encode,
    encode_animation,
    fit_viewport,
)
from telerad.viewer_api.rendering.windowing import (
    StoredLayout,
    Window,
    render_colour,
    render_monochrome,
)

logger = logging.getLogger(__name__)

__all__ = [
    "ENCAPSULATED_PDF",
    "MAX_ANIMATION_FRAMES",
    "RenderRequest",
    "Renderer",
    "metadata",
    "neighbours",
]

ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
#: An animated GIF of a multi-frame instance holds at most this many (leading) frames.
MAX_ANIMATION_FRAMES = 512
#: How long a request waits for the prefetch job already rendering its image (seconds); then
#: it renders the image itself.
PREFETCH_WAIT = 10.0


@dataclass(frozen=True, slots=True)
class RenderRequest:
    """What to render: media type, window (None: the file's, else the full range), viewport
    (None: native size) and JPEG quality."""

    media_type: str
    window: Window | None
    viewport: Viewport | None
    quality: int

    def etag(self, sha256: str, frame: int | str) -> str:
        """A strong entity tag of this rendering of content ``sha256`` (RFC 9110 §8.8.3)."""
        text = f"{sha256}|{frame}|{self!r}"
        return '"' + hashlib.blake2b(text.encode(), digest_size=16).hexdigest() + '"'


class Renderer:
    """Renders frames of stored instances, with a byte-bounded cache and a prefetcher."""

    def __init__(self, objects: ObjectStore, settings: RenderingSettings) -> None:
        self.objects = objects
        self.settings = settings
        self.cache = ByteCache(settings.cache_mb * 1024 * 1024)
        self.prefetcher = Prefetcher(
            settings.prefetch_workers, max_pending=max(8, 4 * settings.prefetch_neighbours)
        )

    def close(self) -> None:
        """Stop the prefetch threads."""
        self.prefetcher.close()

    # --- pixels ---------------------------------------------------------------------------

    def frame_count(self, instance: StoredInstance) -> int:
        """Frames of the instance's pixel data; :class:`NotAnImage` if it has none."""
        description = self.description(instance)
        if instance.frame_ranges is not None:
            return instance.frame_count
        return description.number_of_frames

    def description(self, instance: StoredInstance) -> PixelDescription:
        """The Image Pixel module of ``instance``; :class:`NotAnImage` without pixel data."""
        return _description(instance.metadata_json, instance.transfer_syntax_uid)

    def pixels(self, instance: StoredInstance, frame: int) -> npt.NDArray[Any]:
        """Frame ``frame`` (1-based) decoded, from the cache when it is there.

        Raises :class:`NotAnImage`, :class:`~telerad.storage.FrameNotFound` or
        :class:`CorruptFrame`.
        """
        key = ("frame", instance.sha256, frame)
        cached = self.cache.get(key)
        if cached is not None:
            return cached  # type: ignore[no-any-return]
        array, native_view = self._decode(instance, frame)
        array.flags.writeable = False
        if not native_view:  # a native view is cheaper to read again (the module docstring)
            self.cache.put(key, array, array.nbytes)
        return array

    def _decode(self, instance: StoredInstance, frame: int) -> tuple[npt.NDArray[Any], bool]:
        """The frame's pixels, and whether they are a view of its bytes read by byte range."""
        description = self.description(instance)
        if not 1 <= frame <= self.frame_count(instance):
            raise FrameNotFound(f"frame {frame} is not in this instance")
        palette = description.photometric_interpretation == "PALETTE COLOR"
        try:
            if instance.frame_ranges is None or palette:
                return self._decode_whole(instance, frame, palette), False
            data = read_frame(self.objects, instance, frame)
            native = _native_monochrome(data, description)
            if native is not None:
                return native, True
            return decode_frame(data, description), False
        except CorruptFrame as exc:
            raise CorruptFrame(f"frame {frame} cannot be decoded: {exc}") from exc

    def _decode_whole(
        self, instance: StoredInstance, frame: int, palette: bool
    ) -> npt.NDArray[Any]:
        """Decode one frame from the whole object (see the module docstring)."""
        raw = self.objects.get(instance.object_key)
        try:
            array = decode_object_frame(raw, frame)
        except IndexError as exc:
            raise FrameNotFound(str(exc)) from exc
        if not palette:
            return array
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                header = pydicom.dcmread(io.BytesIO(raw), stop_before_pixels=True)
                return np.asarray(apply_color_lut(array, header))
        except Exception as exc:  # a missing or malformed palette LUT
            raise CorruptFrame(f"{type(exc).__name__}: {exc}") from exc

    # --- rendering --------------------------------------------------------------------------

    def display(
        self, instance: StoredInstance, frame: int, window: Window | None
    ) -> npt.NDArray[np.uint8]:
        """8-bit grey or RGB display values of a frame (module :mod:`.windowing`)."""
        pixels = self.pixels(instance, frame)
        description = self.description(instance)
        if pixels.ndim == 3:  # colour: the decoder gives RGB (pixels module)
            palette = description.photometric_interpretation == "PALETTE COLOR"
            bits = 8 * pixels.dtype.itemsize if palette else description.bits_stored
            return render_colour(pixels, bits)
        meta = metadata(instance)
        layout = StoredLayout(description.bits_stored, description.pixel_representation)
        chosen = window or attributes.file_window(meta, frame)
        invert = description.photometric_interpretation == "MONOCHROME1"
        return render_monochrome(
            pixels, layout, attributes.file_rescale(meta, frame), chosen, invert=invert
        )

    def render(self, instance: StoredInstance, frame: int, request: RenderRequest) -> bytes:
        """The encoded image of one frame, from the cache when it is there."""
        key = ("rendered", instance.sha256, frame, request)
        cached = self.cache.get(key)
        if cached is not None:
            return cached  # type: ignore[no-any-return]
        running = self.prefetcher.claim(key)
        if running is not None:
            # A failed prefetch: render it here, where the error reaches the request.
            with contextlib.suppress(Exception):
                return running.result(timeout=PREFETCH_WAIT)  # type: ignore[no-any-return]
        return self._render(key, instance, frame, request)

    def _render(
        self, key: tuple[Any, ...], instance: StoredInstance, frame: int, request: RenderRequest
    ) -> bytes:
        image = fit_viewport(self.display(instance, frame, request.window), request.viewport)
        body = encode(image, request.media_type, request.quality, self.settings.png_compress_level)
        self.cache.put(key, body, len(body))
        return body

    def render_animation(self, instance: StoredInstance, request: RenderRequest) -> bytes:
        """An animated GIF of every frame (at most :data:`MAX_ANIMATION_FRAMES`)."""
        key = ("animation", instance.sha256, request)
        cached = self.cache.get(key)
        if cached is not None:
            return cached  # type: ignore[no-any-return]
        count = min(self.frame_count(instance), MAX_ANIMATION_FRAMES)
        images = [
            fit_viewport(self.display(instance, frame, request.window), request.viewport)
            for frame in range(1, count + 1)
        ]
        body = encode_animation(images)
        self.cache.put(key, body, len(body))
        return body

    def render_instance(self, instance: StoredInstance, request: RenderRequest) -> bytes:
        """An instance rendered: all frames as an animated GIF when GIF is asked of a
        multi-frame instance, else its first frame."""
        if request.media_type == GIF and self.frame_count(instance) > 1:
            return self.render_animation(instance, request)
        return self.render(instance, 1, request)

    def document(self, instance: StoredInstance) -> bytes:
        """The PDF of an Encapsulated PDF instance (Encapsulated Document, 0042,0011)."""
        key = ("document", instance.sha256)
        cached = self.cache.get(key)
        if cached is not None:
            return cached  # type: ignore[no-any-return]
        try:
            dataset = pydicom.dcmread(io.BytesIO(self.objects.get(instance.object_key)))
            body = bytes(dataset.EncapsulatedDocument)
            length = dataset.get("EncapsulatedDocumentLength")
        except Exception as exc:
            raise NotAnImage(f"no readable Encapsulated Document: {type(exc).__name__}") from exc
        if isinstance(length, int) and 0 < length <= len(body):
            body = body[:length]  # drop the even-length padding byte (PS3.5 §7.1)
        self.cache.put(key, body, len(body))
        return body

    # --- prefetch ---------------------------------------------------------------------------

    def prefetch(
        self, targets: Sequence[tuple[StoredInstance, int]], request: RenderRequest
    ) -> int:
        """Render ``targets`` (instance, frame) in the background unless already cached;
        returns how many were queued."""
        queued = 0
        for instance, frame in targets:
            key = ("rendered", instance.sha256, frame, request)
            if key in self.cache:
                continue
            queued += self.prefetcher.submit(key, _job(self._render, key, instance, frame, request))
        return queued


def _job(
    render: Callable[[tuple[Any, ...], StoredInstance, int, RenderRequest], bytes],
    key: tuple[Any, ...],
    instance: StoredInstance,
    frame: int,
    request: RenderRequest,
) -> Callable[[], bytes]:
    return lambda: render(key, instance, frame, request)


def neighbours(count: int, index: int, reach: int) -> list[int]:
    """Indexes within ``reach`` of ``index`` in ``0..count-1``, nearest first, forward first."""
    found: list[int] = []
    for step in range(1, reach + 1):
        found.extend(i for i in (index + step, index - step) if 0 <= i < count)
    return found


def metadata(instance: StoredInstance) -> dict[str, Any]:
    """The instance's DICOM JSON as a dict (shared: do not modify it)."""
    return _parsed(instance.metadata_json)


@lru_cache(maxsize=512)
def _parsed(text: str) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(text)
    return parsed


@lru_cache(maxsize=512)
def _description(text: str, transfer_syntax_uid: str) -> PixelDescription:
    return PixelDescription.from_metadata(_parsed(text), transfer_syntax_uid)


def _native_monochrome(data: bytes, description: PixelDescription) -> npt.NDArray[Any] | None:
    """A native 8/16-bit single-sample frame as an array view of ``data``, else None."""
    if not description.is_native or description.samples_per_pixel != 1:
        return None
    if description.bits_allocated not in (8, 16):
        return None
    size = description.rows * description.columns
    itemsize = description.bits_allocated // 8
    if len(data) < size * itemsize:
        raise CorruptFrame(f"native frame is {len(data)} bytes, {size * itemsize} expected")
    kind = "i" if description.pixel_representation == 1 else "u"
    dtype = np.dtype(f"<{kind}{itemsize}")
    return np.frombuffer(data, dtype=dtype, count=size).reshape(
        description.rows, description.columns
    )
