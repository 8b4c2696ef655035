# Copyright (c) the dermseg contributors. Apache-2.0.
"""Checking a case before the store takes it, and encoding the files the store keeps of it.

Nothing here touches the store.  Every check runs, and every file is encoded in memory, before the store takes
its write lock: a refused case leaves nothing behind, and the lock is held only for the writes themselves.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Dict, Tuple

import numpy as np
import PIL.Image

from operators.conventions import Route, is_valid_uid

from .schema import PNG_SIGNATURE

__all__ = ["ROUTES", "check_case", "case_payload", "mask_png_bytes"]

ROUTES = tuple(route.value for route in Route)


def _png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    PIL.Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def mask_png_bytes(mask: np.ndarray) -> bytes:
    """A mask as the bundle and ISIC store it: 8-bit PNG, 0 outside, 255 lesion."""
    return _png_bytes(np.where(np.asarray(mask) > 0, 255, 0).astype(np.uint8))


def check_case(
    sop_instance_uid: str, study_instance_uid: str, series_instance_uid: str, image, mask, confidence: float,
    route: str, model_version: str,
) -> Tuple[np.ndarray, np.ndarray, float]:
    """The arguments of ``EdgeStore.record_case``, checked: ``(image, mask, confidence)`` as arrays and a float.

    Raises ValueError for an argument that breaks the contract, naming it.
    """
    if not is_valid_uid(sop_instance_uid):
        raise ValueError(f"sop_instance_uid {sop_instance_uid!r} is not a valid DICOM UID (digits and dots, <= 64)")
    for name, value in (("study_instance_uid", study_instance_uid), ("series_instance_uid", series_instance_uid)):
        if not is_valid_uid(value):
            raise ValueError(f"{name} {value!r} is not a valid DICOM UID")
    if route not in ROUTES:
        raise ValueError(f"route {route!r} must be one of {ROUTES}")
    confidence = float(confidence)
    if not (math.isfinite(confidence) and 0.0 <= confidence <= 1.0):
        raise ValueError(f"confidence {confidence} must be a number in [0, 1]")
    if not isinstance(model_version, str) or not model_version.strip():
        raise ValueError(f"model_version {model_version!r} must be a non-empty string")
    image = np.asarray(image)
    mask = np.asarray(mask)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} does not match the image's {image.shape[:2]}")
    return image, mask, confidence


def case_payload(
    sop_instance_uid: str, source_path, image: np.ndarray, mask: np.ndarray, seg_path=None, sr_path=None,
    overlay_path=None,
) -> Dict[str, bytes]:
    """The files the store keeps of a checked case, by kind (see ``schema.FILE_NAMES``), encoded.

    The RGB image and the proposed mask as PNG (mask 0/255), the source DICOM, and the SEG, SR and overlay PNG
    where given.  Raises ValueError where the source is not the DICOM of this image or the overlay is no PNG.
    """
    source_bytes = Path(source_path).read_bytes()
    _check_source(source_path, source_bytes, sop_instance_uid, image.shape[:2])
    payload: Dict[str, bytes] = {
        "image": _png_bytes(np.ascontiguousarray(image)),
        "mask": mask_png_bytes(mask),
        "source": source_bytes,
    }
    for kind, path in (("seg", seg_path), ("sr", sr_path), ("overlay", overlay_path)):
        if path is not None:
            payload[kind] = Path(path).read_bytes()
    if "overlay" in payload and not payload["overlay"].startswith(PNG_SIGNATURE):
        raise ValueError(f"overlay {overlay_path} is not a PNG file")
    return payload


def _check_source(path, data: bytes, sop_instance_uid: str, shape: Tuple[int, int]) -> None:
    """The source DICOM must be the image the case is about: same SOP Instance UID, same size."""
    import pydicom  # lazily: the store's read-only commands need no DICOM parsing

    try:
        source = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    except Exception as exc:
        raise ValueError(f"source {path} is not a readable DICOM file: {exc}") from None
    if str(source.get("SOPInstanceUID", "")) != sop_instance_uid:
        raise ValueError(f"source {path} has SOPInstanceUID {source.get('SOPInstanceUID')!r}, not {sop_instance_uid}")
    rows, columns = source.get("Rows"), source.get("Columns")
    if rows is not None and columns is not None and (int(rows), int(columns)) != tuple(shape):
        raise ValueError(f"source {path} is {rows}x{columns} pixels, the image is {shape[0]}x{shape[1]}")
