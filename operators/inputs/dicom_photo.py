# Copyright (c) the dermseg contributors. Apache-2.0.
"""DICOM photographs: Dermoscopic Photography, VL Photographic and Secondary Capture images, read as they are.

The file itself becomes the case's source (the SEG, SR and SC reference it), so it is completed with what
highdicom requires rather than rebuilt.  Every size is checked against what the file declares before anything
is allocated: element lengths against the file's size, the header's rows and columns against ``MAX_PIXELS``, a
compressed frame's own declared size against the header's, and a deflated data set (inflated whole by pydicom
before any of it could be checked) is refused.  Its UIDs become file names, so they are checked too.
"""

from __future__ import annotations

import io
import math
import os
import struct
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import PIL.Image
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.errors import InvalidDicomError
from pydicom.uid import DeflatedExplicitVRLittleEndian, JPEGBaseline8Bit, RLELossless
from pydicom.valuerep import DA, TM

from ..case import Case
from ..conventions import (
    DERMOSCOPIC_PHOTOGRAPHY, PHOTO_SOP_CLASSES, SECONDARY_CAPTURE, VL_PHOTOGRAPHIC, is_valid_uid,
)
from .common import SkippedInput, check_size

__all__ = ["dicom_to_rgb", "load_dicom", "try_load"]

# The attributes highdicom needs on every source image (empty values are fine): it copies them into each SEG
# and SR, where they are Type 2 (present, possibly empty), and refuses a source without them.
_TYPE2_ATTRIBUTES = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
    "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName",
)


def _codestream_size(frame: bytes) -> Optional[Tuple[int, int]]:
    """``(rows, columns)`` as a compressed frame's own header declares them (JPEG / JPEG-LS SOF, JPEG 2000 SIZ)."""
    if frame[:4] == b"\xff\x4f\xff\x51" and len(frame) >= 24:  # JPEG 2000: SOC, then SIZ with Xsiz Ysiz XOsiz YOsiz
        xsiz, ysiz, x0, y0 = struct.unpack(">4I", frame[8:24])
        return ysiz - y0, xsiz - x0
    if frame[:2] != b"\xff\xd8":
        return None
    offset = 2  # JPEG: walk the marker segments to the start of frame
    while offset + 9 <= len(frame) and frame[offset] == 0xFF:
        marker = frame[offset + 1]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC) or marker == 0xF7:  # SOFn, JPEG-LS SOF55
            return struct.unpack(">HH", frame[offset + 5 : offset + 9])
        offset += 2 + struct.unpack(">H", frame[offset + 2 : offset + 4])[0]
    return None


def _check_compressed_size(ds: Dataset, syntax: str, rows: int, columns: int) -> None:
    """A compressed frame must declare the size the DICOM header declares, checked before decoding it: a decoder
    allocates what the stream declares, and a JPEG stream can declare gigapixels inside a small, honest-looking file.
    """
    if syntax == RLELossless:
        return  # decoded into the size the DICOM header declares
    frame = next(generate_frames(ds.PixelData, number_of_frames=1), b"")
    size = _codestream_size(frame)
    if size is None:
        raise ValueError(f"cannot read the image size in the compressed pixel data ({pydicom.uid.UID(syntax).name})")
    if size != (rows, columns):
        raise ValueError(
            f"the compressed image declares {size[0]} x {size[1]} pixels, the DICOM header {rows} x {columns}"
        )


def dicom_to_rgb(ds: Dataset) -> np.ndarray:
    """The photograph in a DICOM dataset as ``(H, W, 3)`` uint8 RGB.

    Handles uncompressed RGB / YBR_FULL and JPEG baseline YBR_FULL_422, 8-bit monochrome (repeated to three
    channels), and files whose header says YBR_FULL_422 while their uncompressed bytes are plain RGB (seen in the
    ISIC 2020 DICOMs): uncompressed YBR_FULL_422 holds 2 bytes a pixel, so 3 bytes a pixel means RGB.
    """
    sop_class = str(ds.get("SOPClassUID", ""))
    if not sop_class:
        raise ValueError("no SOPClassUID: not a valid DICOM instance")
    if sop_class not in PHOTO_SOP_CLASSES:
        name = pydicom.uid.UID(sop_class).name
        raise SkippedInput(f"SOP class {sop_class} ({name}) is not a photograph this app segments")
    if str(ds.get("BurnedInAnnotation", "")).upper() == "YES" and sop_class == SECONDARY_CAPTURE:
        raise SkippedInput("Secondary Capture with burned-in annotation (an overlay, not a photograph)")
    if "PixelData" not in ds:
        raise ValueError("no PixelData")
    rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    check_size(rows, columns, "the file")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames != 1:
        raise ValueError(f"{frames} frames; only single-frame photographs are supported")
    bits = int(ds.get("BitsAllocated", 0) or 0)
    if bits != 8:
        raise ValueError(f"BitsAllocated {bits}; only 8-bit photographs are supported")
    samples = int(ds.get("SamplesPerPixel", 0) or 0)
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    if samples not in (1, 3):
        raise ValueError(f"SamplesPerPixel {samples}; expected 3 (colour) or 1 (grey)")
    if photometric not in ("RGB", "YBR_FULL", "YBR_FULL_422", "MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"PhotometricInterpretation {photometric or '(none)'} is not supported")

    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    compressed = bool(syntax) and pydicom.uid.UID(syntax).is_compressed
    if not compressed:
        data_length = len(ds.PixelData)
        if photometric == "YBR_FULL_422" and samples == 3 and data_length >= rows * columns * 3:
            # header says YBR, bytes are RGB: read them as RGB
            pixels = np.frombuffer(ds.PixelData, dtype=np.uint8, count=rows * columns * 3)
            if int(ds.get("PlanarConfiguration", 0) or 0) == 1:
                return np.ascontiguousarray(pixels.reshape(3, rows, columns).transpose(1, 2, 0))
            return pixels.reshape(rows, columns, 3).copy()
        bytes_per_pixel = 2 if photometric == "YBR_FULL_422" else samples  # 4:2:2 shares chroma between 2 pixels
        needed = rows * columns * bytes_per_pixel
        if data_length < needed:
            raise ValueError(f"PixelData holds {data_length} bytes, {rows} x {columns} x {samples} needs {needed}")
    else:
        _check_compressed_size(ds, syntax, rows, columns)
        if syntax == JPEGBaseline8Bit and samples == 3 and photometric in ("YBR_FULL_422", "YBR_FULL"):
            return _decode_ycbcr_jpeg(ds, rows, columns)

    pixels = ds.pixel_array  # pydicom 3 converts YBR to RGB itself
    if samples == 1:
        if photometric == "MONOCHROME1":
            pixels = 255 - pixels
        pixels = np.repeat(pixels[..., None], 3, axis=-1)
    if pixels.shape != (rows, columns, 3):
        raise ValueError(f"decoded pixels have shape {pixels.shape}, header says {rows} x {columns} x 3")
    return np.ascontiguousarray(pixels.astype(np.uint8, copy=False))


def _decode_ycbcr_jpeg(ds: Dataset, rows: int, columns: int) -> np.ndarray:
    """A baseline JPEG frame in YCbCr decoded straight to RGB by Pillow (libjpeg-turbo converts the colours while
    it decodes).  The same pixels as ``ds.pixel_array``, which decodes with Pillow as well, in a quarter of the
    time: 70 against 250 ms for a 3024 x 2016 camera photo (measured on ``benchmarks/app_throughput.py``'s
    3024 x 2016 inputs)."""
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    with PIL.Image.open(io.BytesIO(frame), formats=["JPEG"]) as image:
        if image.mode not in ("RGB", "YCbCr"):  # e.g. CMYK from an Adobe marker: pydicom's general path
            return np.ascontiguousarray(ds.pixel_array.astype(np.uint8, copy=False))
        pixels = np.asarray(image.convert("RGB"))
    if pixels.shape != (rows, columns, 3):
        raise ValueError(f"decoded pixels have shape {pixels.shape}, header says {rows} x {columns} x 3")
    return pixels


def _complete_source(ds: Dataset) -> Dataset:
    """Add the empty type-2 attributes that highdicom needs on a source and that some real files lack, and make
    the ones it copies into the SEG, SR and SC acceptable to it.

    Text in whatever character set the file declares (ISO 2022 Japanese, one no one knows, none while holding
    UTF-8 bytes) is decoded and the source re-declared as UTF-8: highdicom refuses many declared sets.  Malformed
    type-2 values some devices write (a birth date ``1970-01-01``, a sex ``unknown``) become empty (unknown) and an
    unusable PixelSpacing is dropped, rather than failing the case.
    """
    ds.decode()
    ds.SpecificCharacterSet = "ISO_IR 192"
    for keyword in _TYPE2_ATTRIBUTES:
        if keyword not in ds:
            setattr(ds, keyword, "")
    for keyword, value_type in (("PatientBirthDate", DA), ("StudyDate", DA), ("StudyTime", TM)):
        value = ds.get(keyword)
        try:
            value_type(str(value or "") or None)
        except (TypeError, ValueError):
            setattr(ds, keyword, "")
    if str(ds.PatientSex).upper() not in ("M", "F", "O", ""):
        ds.PatientSex = ""
    if "PixelSpacing" in ds:  # highdicom copies it into the SEG: one value, or a negative one, fails the case
        try:
            row, column = (float(v) for v in ds.PixelSpacing)
            usable = all(math.isfinite(v) and v > 0 for v in (row, column))
        except (TypeError, ValueError):
            usable = False
        if not usable:
            del ds.PixelSpacing  # a calibration no one can use: the lesion area is then given in pixels
    if "Modality" not in ds or not ds.Modality:
        ds.Modality = {DERMOSCOPIC_PHOTOGRAPHY: "DMS", VL_PHOTOGRAPHIC: "XC"}.get(str(ds.SOPClassUID), "OT")
    return ds


def _check_uids(ds: Dataset) -> None:
    for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        value = ds.get(keyword)
        if not is_valid_uid(str(value) if value is not None else None):
            raise ValueError(f"{keyword} {str(value)[:80]!r} is not a valid DICOM UID")


class _FileReadingNoMoreThanItHolds(io.FileIO):
    """A file whose ``read(n)`` allocates at most what is left in it: a corrupt length field in a 7 kB file makes
    pydicom ask for gigabytes, and ``read(n)`` allocates ``n`` bytes before it reads."""

    def __init__(self, path, mode: str = "rb"):  # pydicom re-opens it by name, mode "rb", for deferred values
        super().__init__(str(path), mode)
        self._size = os.fstat(self.fileno()).st_size

    def read(self, size: int = -1) -> bytes:
        if size is not None and size > 0:
            size = min(size, max(0, self._size - self.tell()))
        return super().read(size)


def load_dicom(path: Path, source_file: str) -> Case:
    """The case of a DICOM photograph; ``InvalidDicomError`` for a file that is not DICOM at all."""
    with _FileReadingNoMoreThanItHolds(path) as f:
        # the file meta alone first (InvalidDicomError for a file that is not DICOM at all): a deflated data set is
        # inflated whole by pydicom, before any size in it could be checked (read_file_meta_info's two steps)
        pydicom.filereader.read_preamble(f, False)
        if pydicom.filereader._read_file_meta_info(f).get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
            raise ValueError("Deflated Explicit VR Little Endian is not supported (its size cannot be checked before inflating)")
        f.seek(0)
        # values over 1 MB are read only when used, after the size checks below and in dicom_to_rgb
        ds = pydicom.dcmread(f, defer_size="1 MB")
    file_size = path.stat().st_size
    for tag in list(ds.keys()):
        length = getattr(ds.get_item(tag, keep_deferred=True), "length", 0)
        if length != 0xFFFFFFFF and length > file_size:
            raise ValueError(f"element {tag} declares {length} bytes, more than the whole file holds (a corrupt file)")
    rgb = dicom_to_rgb(ds)
    _check_uids(ds)
    _complete_source(ds)
    # The pixels now live in `rgb`; the SEG, SR and SC only need the source's attributes.
    del ds.PixelData
    return Case(source_file=source_file, source=ds, rgb=rgb)


def try_load(path: Path, source_file: str) -> Optional[Case]:
    """The case of a DICOM file, or ``None`` when the file is not DICOM at all (no ``DICM`` preamble)."""
    try:
        return load_dicom(path, source_file)
    except InvalidDicomError:
        return None
