# Copyright (c) the dermseg contributors. Apache-2.0.
"""Plain photos (JPEG, PNG, TIFF, BMP, WebP), wrapped as DICOM VL Photographic images.

A SEG, SR or SC must reference a DICOM source, and a phone or a dermoscope export gives a JPEG: so each photo is
wrapped in a VL Photographic (XC) dataset, a new study with empty patient fields unless a sidecar
``<photo>.json`` next to it names them.  The wrapper's UIDs derive from the photo's bytes, so a re-run gives the
same wrapper and adds nothing twice to a PACS.  The photo's declared size is checked against ``MAX_PIXELS``
before its pixels are decoded (Pillow reads the header alone first).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import PIL.Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from networks.preprocessing import read_rgb

from ..case import Case
from ..conventions import MANUFACTURER, VL_PHOTOGRAPHIC
from .common import check_size

__all__ = ["PHOTO_SUFFIXES", "SIDECAR_KEYWORDS", "is_sidecar", "wrap_photo_as_dicom", "load_photo", "try_load"]

# What a photo file is called: one so named that no image library reads is an error, not a skipped file.
PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp"}
# What a sidecar `<photo>.json` may set on the wrapper of a plain photo.
SIDECAR_KEYWORDS = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber",
    "StudyID", "StudyDescription", "SeriesDescription", "ReferringPhysicianName", "BodyPartExamined",
)


def is_sidecar(path: Path) -> bool:
    """``lesion.jpg.json`` or ``lesion.json`` next to a photo holds that photo's patient fields: not an input."""
    if path.suffix.lower() != ".json":
        return False
    stem = path.with_suffix("")
    if stem.suffix.lower() in PHOTO_SUFFIXES:
        return stem.exists()
    return any(stem.with_suffix(s).exists() or stem.with_suffix(s.upper()).exists() for s in PHOTO_SUFFIXES)


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
    check_size(height, width, "the photo")
    rgb = np.array(read_rgb(path))  # the shared reader (EXIF-upright, any mode to 8-bit RGB); a writable copy
    patient = _read_sidecar(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    source = wrap_photo_as_dicom(path, rgb, patient, digest=digest)
    return Case(source_file=source_file, source=source, wrapped=True, rgb=rgb)


def try_load(path: Path, source_file: str) -> Optional[Case]:
    """The case of a photo, or ``None`` when no image library identifies the file and its suffix does not claim
    to be a photo's; a file named as a photo that is not one is an error."""
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
        return None
    return load_photo(path, source_file)
