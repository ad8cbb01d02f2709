"""Key images for report outputs: a minimal frame → JPEG rendering (pydicom + Pillow).

The simplest correct windowing for a report thumbnail (PS3.3 §C.11.2.1.2): the Modality LUT
(Rescale Slope/Intercept), then the instance's first Window Center/Width (linear VOI LUT),
else the frame's minimum and maximum; MONOCHROME1 is inverted; RGB is passed through. An image
that cannot be decoded here (a transfer syntax without a decoder, an unusual photometric
interpretation) is left out of the report rather than failing it.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence

import numpy as np
import pydicom
from numpy.typing import NDArray
from PIL import Image
from sqlalchemy.orm import Session

from telerad.storage import NotFound, ObjectStore, Scope, StorageError, find_instances
from telerad.worklist import KeyImage, KeyImageRef

logger = logging.getLogger(__name__)
MAX_SIDE = 512


def render_key_images(
    session: Session, objects: ObjectStore, study_uid: str, refs: Sequence[KeyImageRef]
) -> list[KeyImage]:
    """JPEGs of the key images of a report (those that can be rendered), in order."""
    if not refs:
        return []
    try:
        instances = {i.sop_instance_uid: i for i in find_instances(session, Scope(None), study_uid)}
    except NotFound:
        return []
    images = []
    for ref in refs:
        instance = instances.get(ref.sop_instance_uid)
        if instance is None:
            continue
        try:
            data = render_frame_jpeg(objects.get(instance.object_key), ref.frame)
        except (StorageError, ValueError, AttributeError, NotImplementedError, RuntimeError) as exc:
            logger.warning("key image %s not rendered: %s", ref.sop_instance_uid, exc)
            continue
        images.append(KeyImage(ref.sop_instance_uid, ref.frame, data))
    return images


def render_frame_jpeg(part10: bytes, frame: int = 1, quality: int = 90) -> bytes:
    """Frame ``frame`` (1-based) of a Part-10 image as a JPEG, windowed for display."""
    dataset = pydicom.dcmread(io.BytesIO(part10))
    pixels = dataset.pixel_array
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    samples = int(dataset.get("SamplesPerPixel", 1))
    if frames > 1:
        if not 1 <= frame <= frames:
            raise ValueError(f"no frame {frame}")
        pixels = pixels[frame - 1]
    if samples == 3:
        image = Image.fromarray(np.asarray(pixels, dtype=np.uint8), mode="RGB")
    else:
        image = Image.fromarray(_windowed(dataset, pixels), mode="L")
    image.thumbnail((MAX_SIDE, MAX_SIDE))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _windowed(dataset: pydicom.Dataset, pixels: NDArray[np.generic]) -> NDArray[np.uint8]:
    values = pixels.astype(np.float64) * float(dataset.get("RescaleSlope", 1) or 1)
    values += float(dataset.get("RescaleIntercept", 0) or 0)
    center, width = _window(dataset, values)
    low = center - width / 2
    scaled = np.clip((values - low) / max(width, 1e-6), 0.0, 1.0) * 255.0
    if dataset.get("PhotometricInterpretation", "") == "MONOCHROME1":
        scaled = 255.0 - scaled
    return np.asarray(np.rint(scaled), dtype=np.uint8)


def _window(dataset: pydicom.Dataset, values: NDArray[np.float64]) -> tuple[float, float]:
    center, width = dataset.get("WindowCenter"), dataset.get("WindowWidth")
    if center is not None and width is not None and _first(width) > 0:
        return _first(center), _first(width)
    low, high = float(values.min()), float(values.max())
    return (low + high) / 2, max(high - low, 1.0)


def _first(value: object) -> float:
    """The first value of a (possibly multi-valued) DS element."""
    if isinstance(value, pydicom.multival.MultiValue):
        return float(value[0])
    return float(value)  # type: ignore[arg-type]
