# Copyright (c) the dermseg contributors. Apache-2.0.
"""Loader operator: every photograph under the input folder becomes a :class:`~operators.case.Case`.

Why not the SDK's ``DICOMDataLoaderOperator`` -> ``DICOMSeriesSelectorOperator`` ->
``DICOMSeriesToVolumeOperator`` chain: the volume operator fails on a series of several photos (no
ImagePositionPatient), the chain reads no plain JPEG/PNG photos, and one unreadable file must become one
``error`` entry rather than the end of the batch.  So this one operator walks the folder itself, one file at a
time, each file inside its own error boundary, and emits the cases in chunks so memory stays flat on long runs.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import logging
import math
import os
import stat
import struct
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import numpy as np
import PIL.Image
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.encaps import generate_frames
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, RLELossless, generate_uid
from pydicom.valuerep import DA, TM

from monai.deploy.core import Fragment, Operator, OperatorSpec

from networks.preprocessing import read_rgb

from .case import Case, CaseBatch, CaseStatus, is_valid_uid

__all__ = [
    "SkinPhotoLoaderOperator",
    "PHOTO_SOP_CLASSES",
    "MAX_PIXELS",
    "MAX_FILE_BYTES",
    "load_file",
    "iter_input_files",
    "dicom_to_rgb",
    "wrap_photo_as_dicom",
    "SkippedInput",
]

DERMOSCOPIC_PHOTOGRAPHY = "1.2.840.10008.5.1.4.1.1.77.1.7"
VL_PHOTOGRAPHIC = "1.2.840.10008.5.1.4.1.1.77.1.4"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
PHOTO_SOP_CLASSES = {
    DERMOSCOPIC_PHOTOGRAPHY: "Dermoscopic Photography Image Storage",
    VL_PHOTOGRAPHIC: "VL Photographic Image Storage",
    SECONDARY_CAPTURE: "Secondary Capture Image Storage",
}
PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp"}

# Refused before any pixel is decoded: a decompression bomb declares a huge size in a few bytes.
# 50 megapixels is above any dermoscope or phone camera in use (a 48 MP phone sensor is 8000 x 6000).
MAX_PIXELS = 50_000_000
# No file is read whole beyond this: uncompressed 8-bit RGB at MAX_PIXELS is 150 MB.
MAX_FILE_BYTES = 4 * MAX_PIXELS

# The attributes highdicom needs on every source image (empty values are fine): it copies them into each SEG
# and SR, where they are Type 2 (present, possibly empty), and refuses a source without them.
_TYPE2_ATTRIBUTES = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
    "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName",
)
# What a sidecar `<photo>.json` may set on the wrapper of a plain photo.
SIDECAR_KEYWORDS = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber",
    "StudyID", "StudyDescription", "SeriesDescription", "ReferringPhysicianName", "BodyPartExamined",
)
MANUFACTURER = "dermseg"

logger = logging.getLogger(__name__)


class SkippedInput(Exception):
    """A readable file that is not a photograph to segment (a CT, an SR, a text file): reported, not an error."""


# ---------------------------------------------------------------------------------------------------------------
# Finding the input files


def _is_sidecar(path: Path) -> bool:
    """``lesion.jpg.json`` or ``lesion.json`` next to a photo holds that photo's patient fields: not an input."""
    if path.suffix.lower() != ".json":
        return False
    stem = path.with_suffix("")
    if stem.suffix.lower() in PHOTO_SUFFIXES:
        return stem.exists()
    return any(stem.with_suffix(s).exists() or stem.with_suffix(s.upper()).exists() for s in PHOTO_SUFFIXES)


def iter_input_files(input_path: Path, exclude: Optional[Path] = None) -> Iterator[Path]:
    """Every file under ``input_path`` (or the file itself), sorted, without following folder symlinks (loops).

    ``exclude`` (the output folder, where it lies inside the input) is not walked: the app never reads its own
    outputs back as inputs.
    """
    input_path = Path(input_path)
    if input_path.is_file():
        yield input_path
        return
    excluded = Path(exclude).resolve() if exclude is not None else None
    for root, dirs, files in os.walk(input_path, followlinks=False):
        dirs[:] = sorted(d for d in dirs if excluded is None or (Path(root) / d).resolve() != excluded)
        for name in sorted(files):
            path = Path(root) / name
            if name == "DICOMDIR" or _is_sidecar(path):
                continue
            yield path


# ---------------------------------------------------------------------------------------------------------------
# DICOM photographs


def _check_size(rows: int, columns: int, what: str) -> None:
    if rows <= 0 or columns <= 0:
        raise ValueError(f"{what} has an empty image ({rows} x {columns})")
    if rows * columns > MAX_PIXELS:
        raise ValueError(f"{what} declares {rows} x {columns} pixels, more than the {MAX_PIXELS} allowed")


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
    _check_size(rows, columns, "the file")
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

    pixels = ds.pixel_array  # pydicom 3 converts YBR to RGB itself
    if samples == 1:
        if photometric == "MONOCHROME1":
            pixels = 255 - pixels
        pixels = np.repeat(pixels[..., None], 3, axis=-1)
    if pixels.shape != (rows, columns, 3):
        raise ValueError(f"decoded pixels have shape {pixels.shape}, header says {rows} x {columns} x 3")
    return np.ascontiguousarray(pixels.astype(np.uint8, copy=False))


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


# ---------------------------------------------------------------------------------------------------------------
# Plain photos


def _read_sidecar(photo: Path) -> dict:
    for candidate in (photo.with_name(photo.name + ".json"), photo.with_suffix(".json")):
        if candidate.is_file():
            try:
                values = json.loads(candidate.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise ValueError(f"sidecar {candidate.name} is not readable JSON: {exc}") from None
            if not isinstance(values, dict):
                raise ValueError(f"sidecar {candidate.name} must hold a JSON object")
            unknown = sorted(set(values) - set(SIDECAR_KEYWORDS))
            if unknown:
                raise ValueError(f"sidecar {candidate.name} has unknown keys {unknown}; allowed: {list(SIDECAR_KEYWORDS)}")
            for key, value in values.items():
                if not isinstance(value, str) or len(value) > 64:
                    raise ValueError(f"sidecar {candidate.name}: {key} must be a string of at most 64 characters")
            if values.get("PatientSex", "") not in ("", "M", "F", "O"):
                raise ValueError(f"sidecar {candidate.name}: PatientSex must be M, F, O or empty")
            birth = values.get("PatientBirthDate", "")
            if birth and not (len(birth) == 8 and birth.isdigit()):
                raise ValueError(f"sidecar {candidate.name}: PatientBirthDate must be YYYYMMDD")
            return values
    return {}


def _photo_datetime(photo: Path) -> Tuple[str, str]:
    """The EXIF capture time of a photo where it has one (a real study date), else now."""
    try:
        with PIL.Image.open(photo) as im:
            exif = im.getexif()
            value = exif.get_ifd(0x8769).get(0x9003) or exif.get(0x0132)  # DateTimeOriginal, DateTime
        when = _dt.datetime.strptime(str(value).strip(), "%Y:%m:%d %H:%M:%S")
    except Exception:
        when = _dt.datetime.now()
    return when.strftime("%Y%m%d"), when.strftime("%H%M%S")


def wrap_photo_as_dicom(photo: Path, rgb: np.ndarray, patient: Optional[dict] = None, *, digest: str) -> Dataset:
    """A DICOM VL Photographic Image (XC) holding ``rgb``: the source a SEG of a plain photo references.

    Every photo starts a new study, with empty patient fields unless a sidecar gave them.  The UIDs derive from
    the photo's content (``digest``), so the same photo always gets the same wrapper: re-runs add nothing twice.
    """
    patient = patient or {}
    study_date, study_time = _photo_datetime(photo)
    lossy = photo.suffix.lower() in (".jpg", ".jpeg", ".webp")

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = VL_PHOTOGRAPHIC
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[digest, "instance"])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: sidecar names may be in any script
    ds.SOPClassUID = VL_PHOTOGRAPHIC
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[digest, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[digest, "series"])
    # Patient and study: type 2, empty unless the sidecar says otherwise
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber",
                    "ReferringPhysicianName", "StudyID"):
        setattr(ds, keyword, patient.get(keyword, ""))
    for keyword in ("StudyDescription", "SeriesDescription", "BodyPartExamined"):
        if patient.get(keyword):
            setattr(ds, keyword, patient[keyword])
    ds.StudyDate = ds.ContentDate = study_date
    ds.StudyTime = ds.ContentTime = study_time
    ds.Modality = "XC"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Manufacturer = ""
    ds.PatientOrientation = ""
    ds.Laterality = ""
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.DerivationDescription = f"Plain photo {photo.suffix.lower().lstrip('.')} wrapped as DICOM by {MANUFACTURER}"
    ds.AcquisitionContextSequence = []
    ds.LossyImageCompression = "01" if lossy else "00"
    if lossy:
        ds.LossyImageCompressionMethod = "ISO_10918_1"
        ds.LossyImageCompressionRatio = 10  # unknown; a typical JPEG ratio, required when lossy
    ds.BurnedInAnnotation = "NO"
    ds.Rows, ds.Columns = int(rgb.shape[0]), int(rgb.shape[1])
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(rgb, dtype=np.uint8).tobytes()
    return ds


def load_photo(path: Path, source_file: str) -> Case:
    with PIL.Image.open(path) as im:  # reads the header only: the size check comes before decoding
        width, height = im.size
    _check_size(height, width, "the photo")
    rgb = np.array(read_rgb(path))  # the shared reader (EXIF-upright, any mode to 8-bit RGB); a writable copy
    patient = _read_sidecar(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    source = wrap_photo_as_dicom(path, rgb, patient, digest=digest)
    return Case(source_file=source_file, source=source, wrapped=True, rgb=rgb)


# ---------------------------------------------------------------------------------------------------------------


def load_file(path: Path, source_file: str) -> Case:
    """One file to one case.  Never raises: every problem becomes an ``error`` or ``skipped`` case."""
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise ValueError("not a regular file (a FIFO, socket or device): not opened")
        if info.st_size == 0:
            raise ValueError("empty file (0 bytes)")
        if info.st_size > MAX_FILE_BYTES:
            raise ValueError(f"{info.st_size} bytes, more than the {MAX_FILE_BYTES} allowed for one photograph")
        try:
            return load_dicom(path, source_file)
        except InvalidDicomError:
            pass  # not DICOM: perhaps a plain photo
        try:
            with PIL.Image.open(path):
                is_photo = True
        except PIL.Image.DecompressionBombError:
            raise
        except (PIL.UnidentifiedImageError, ValueError):
            is_photo = False
        if not is_photo:
            if path.suffix.lower() in PHOTO_SUFFIXES:
                raise ValueError(f"not a readable {path.suffix.lower().lstrip('.').upper()} image (no image library can identify it)")
            raise SkippedInput("neither a DICOM file nor a photo (JPEG, PNG, ...)")
        return load_photo(path, source_file)
    except SkippedInput as exc:
        return Case(source_file=source_file, status=CaseStatus.SKIPPED, error=f"{source_file}: skipped: {exc}")
    except MemoryError:
        case = Case(source_file=source_file)
        case.fail("loading", "out of memory decoding the image")
        return case
    except OSError as exc:  # the reason without the absolute path: results.json names no site folder layout
        case = Case(source_file=source_file)
        case.fail("loading", f"{type(exc).__name__}: {exc.strerror or exc}")
        return case
    except Exception as exc:  # one bad file must never end the batch
        case = Case(source_file=source_file)
        case.fail("loading", exc)
        return case


class SkinPhotoLoaderOperator(Operator):
    """Walks the input folder and emits the photographs in it as lists of :class:`Case`, a chunk per tick.

    Reads DICOM Dermoscopic Photography (DMS), VL Photographic (XC) and RGB Secondary Capture images
    (uncompressed or JPEG baseline), and plain JPEG/PNG photos, which it wraps as VL Photographic sources.
    Non-photo DICOM (CT, SR, ...) becomes a ``skipped`` case, an unreadable file an ``error`` case.
    Duplicate SOPInstanceUIDs (the same image twice) are reported once as errors, never processed twice.

    Named output:
        cases: CaseBatch (a list of Case), at most ``chunk_size`` per tick; the operator stops itself after the
        last file, whose batch has ``last`` set (an empty input folder gives one empty last batch).
    """

    def __init__(
        self, fragment: Fragment, *args, input_path: Path, chunk_size: int = 8, exclude: Optional[Path] = None, **kwargs
    ):
        self.input_path = Path(input_path)
        self.exclude = exclude
        self.chunk_size = max(1, int(chunk_size))
        self._files: Optional[Iterator[Path]] = None
        self._seen_sop_instances: dict = {}
        self._logger = logging.getLogger(f"{__name__}.{type(self).__name__}")
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.output("cases")

    def compute(self, op_input, op_output, context):
        if self._files is None:
            self._files = iter_input_files(self.input_path, self.exclude)
        chunk: List[Case] = []
        exhausted = False
        while len(chunk) < self.chunk_size:
            try:
                path = next(self._files)
            except StopIteration:
                exhausted = True
                break
            except OSError as exc:  # a folder vanished or is unreadable mid-walk
                self._logger.warning("input folder walk stopped: %s", type(exc).__name__)
                exhausted = True
                break
            chunk.append(self._load(path))
        self._logger.info("loaded %d file(s): %d ok", len(chunk), sum(c.ok for c in chunk))
        op_output.emit(CaseBatch(chunk, last=exhausted), "cases")
        if exhausted:
            self.stop_execution()

    def _load(self, path: Path) -> Case:
        base = self.input_path if self.input_path.is_dir() else self.input_path.parent
        source_file = path.relative_to(base).as_posix()
        case = load_file(path, source_file)
        self._logger.debug("%s: %s", source_file, case.status)
        uid = case.sop_instance_uid
        if case.ok and uid is not None:
            first = self._seen_sop_instances.setdefault(uid, source_file)
            if first != source_file:
                case.fail("loading", f"duplicate SOPInstanceUID, the same image as {first}; not processed twice")
        return case
