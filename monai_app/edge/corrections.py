# Copyright (c) the dermseg contributors. Apache-2.0.
"""Reading the institution's corrections and closing their reviews.

A correction is either a PNG mask named ``<SOPInstanceUID>.png`` or a DICOM-SEG, as a viewer such as 3D Slicer
or OHIF saves it, that references the source image (ReferencedSeriesSequence and the per-frame source image
references).  A SEG is read as ``highdicom.seg.segread`` reads it, once the file is known to be a Segmentation.
From a SEG the segments labelled as skin lesion are taken (segmented property type SNOMED CT 95324001, or a
segment label containing "lesion"); where none is so labelled, the union of all segments.  FRACTIONAL segments
count as lesion where the value is at least 0.5.  Any valid SEG a viewer writes is read: Pixel Measures without
a Slice Thickness (legal for a photograph, and what highdicom writes from a source with Pixel Spacing) get a
placeholder thickness in the copy that is read, since highdicom's reader insists on one; the mask does not use it.

Every file is checked on its own (readable, a PNG or a SEG, names or references a case that is waiting for
review, as large as the source image); a bad file gets one clear message naming it and its problem, and never
stops the others.  The good ones are committed together in one transaction: a killed import imports nothing.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import PIL.Image

from operators.conventions import SEGMENTATION_STORAGE, is_valid_uid

from .schema import PNG_SIGNATURE, CaseState, CorrectedMask
from .store import EdgeStore

__all__ = ["CorrectionError", "ImportReport", "read_correction", "import_corrections", "SEGMENTATION_STORAGE"]

SKIN_LESION_CODE = ("95324001", "SCT")


class CorrectionError(Exception):
    """One correction file that cannot be imported; ``str()`` names the file and the problem."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = Path(path)
        self.problem = problem


@dataclass
class ImportReport:
    imported: List[Tuple[Path, str]] = field(default_factory=list)  # (file, SOP Instance UID)
    unchanged: List[Tuple[Path, str]] = field(default_factory=list)  # already imported before, same mask
    failed: List[CorrectionError] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> dict:
        return {"imported": len(self.imported), "unchanged": len(self.unchanged), "failed": len(self.failed)}


def _read_png_mask(path: Path, data: bytes) -> np.ndarray:
    """Same reading as ``networks.preprocessing.read_mask`` (anything non-zero is lesion), PNG only."""
    if not data.startswith(PNG_SIGNATURE):
        raise CorrectionError(path, "not a PNG image (corrections named .png must be PNG files)")
    try:
        with PIL.Image.open(io.BytesIO(data)) as im:
            im.load()
            return (np.asarray(im.convert("L")) > 0).astype(np.uint8)
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError... for a damaged file
        raise CorrectionError(path, f"unreadable PNG ({type(exc).__name__}: {exc})") from None


def _lesion_segment_numbers(seg) -> List[int]:
    """The segments labelled skin lesion, else all of them (see the module docstring)."""
    lesion = []
    for description in seg.SegmentSequence:
        number = int(description.SegmentNumber)
        label = str(description.get("SegmentLabel", "")).lower()
        codes = [
            (str(item.CodeValue), str(item.CodingSchemeDesignator))
            for item in description.get("SegmentedPropertyTypeCodeSequence", [])
            if "CodeValue" in item
        ]
        if SKIN_LESION_CODE in codes or "lesion" in label:
            lesion.append(number)
    return lesion or [int(description.SegmentNumber) for description in seg.SegmentSequence]


def _fill_slice_thickness(dataset) -> None:
    """A placeholder SliceThickness in Pixel Measures items that have none (see the module docstring)."""
    groups = [*dataset.get("SharedFunctionalGroupsSequence", []), *dataset.get("PerFrameFunctionalGroupsSequence", [])]
    for group in groups:
        for measures in group.get("PixelMeasuresSequence", []):
            if "SliceThickness" not in measures:
                measures.SliceThickness = 1.0


def _read_seg(path: Path, data: bytes, store: EdgeStore) -> Tuple[str, np.ndarray]:
    """The case a DICOM-SEG corrects and its lesion mask; CorrectionError for anything else."""
    import highdicom as hd
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.uid import UID

    try:
        dataset = pydicom.dcmread(io.BytesIO(data))
    except InvalidDicomError:
        raise CorrectionError(path, "neither a PNG mask named <SOPInstanceUID>.png nor a DICOM file") from None
    except Exception as exc:
        raise CorrectionError(path, f"unreadable DICOM file ({type(exc).__name__}: {exc})") from None
    file_meta = getattr(dataset, "file_meta", None)
    sop_class = str(dataset.get("SOPClassUID", "") or (file_meta.get("MediaStorageSOPClassUID", "") if file_meta else ""))
    if sop_class == SEGMENTATION_STORAGE and ("PixelData" not in dataset or "SegmentSequence" not in dataset):
        raise CorrectionError(path, "damaged or truncated DICOM-SEG (no segments or no pixel data)")
    if sop_class != SEGMENTATION_STORAGE:
        name = UID(sop_class).name if sop_class else "missing"
        raise CorrectionError(
            path, f"not a DICOM-SEG: SOP Class is {name} (Modality {dataset.get('Modality', '?')}); send a Segmentation"
        )
    _fill_slice_thickness(dataset)
    try:
        seg = hd.seg.Segmentation.from_dataset(dataset, copy=False)
    except Exception as exc:
        raise CorrectionError(path, f"DICOM-SEG that highdicom cannot read ({type(exc).__name__}: {exc})") from None

    referenced = sorted({str(sop_uid) for _, _, sop_uid in seg.get_source_image_uids()})
    known = [uid for uid in referenced if store.get_case(uid) is not None]
    if not known:
        shown = ", ".join(referenced) if referenced else "no source image at all"
        raise CorrectionError(path, f"unknown UID: the SEG references {shown}, not a case in this store")
    if len(known) > 1:
        raise CorrectionError(path, f"the SEG references several cases ({', '.join(known)}); send one SEG per case")
    uid = known[0]
    try:
        pixels = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=[uid], segment_numbers=_lesion_segment_numbers(seg), dtype=np.float32
        )
    except Exception as exc:
        raise CorrectionError(
            path, f"cannot take the frames of source {uid} from the SEG ({type(exc).__name__}: {exc})"
        ) from None
    # (1 source, rows, columns, segments) -> the union of the lesion segments
    return uid, (pixels[0].max(axis=-1) >= 0.5).astype(np.uint8)


def read_correction(path, store: EdgeStore) -> CorrectedMask:
    """Read and check one correction file against the store; CorrectionError names the file and the problem."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CorrectionError(path, f"unreadable file ({exc.strerror})") from None
    if path.suffix.lower() == ".png":
        uid = path.stem
        if not is_valid_uid(uid):
            raise CorrectionError(path, "a PNG correction must be named <SOPInstanceUID>.png (for example 1.2.3.4.png)")
        mask, seg_path = _read_png_mask(path, data), None
        if store.get_case(uid) is None:
            raise CorrectionError(path, f"unknown UID {uid}: no such case in this store")
    else:
        uid, mask = _read_seg(path, data, store)
        seg_path = path
    case = store.get_case(uid)
    if tuple(mask.shape) != (case.rows, case.columns):
        raise CorrectionError(
            path,
            f"wrong size: the mask is {mask.shape[0]}x{mask.shape[1]} (rows x columns), "
            f"the source image of {uid} is {case.rows}x{case.columns}",
        )
    return CorrectedMask(sop_instance_uid=uid, mask=mask, origin=path, seg_path=seg_path)


def _same_as_stored(correction: CorrectedMask, store: EdgeStore) -> bool:
    case = store.get_case(correction.sop_instance_uid)
    with PIL.Image.open(case.files["corrected_mask"]) as im:
        stored = np.asarray(im.convert("L")) > 0
    return bool(np.array_equal(stored, correction.mask > 0))


def correction_files(folder: Path) -> List[Path]:
    """Every file under ``folder`` (recursively: viewers save in sub-folders), hidden files excepted."""
    return sorted(
        path for path in folder.rglob("*")
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )


def import_corrections(store: EdgeStore, folder) -> ImportReport:
    """Import every correction file in ``folder`` into ``store`` (see the module docstring); return the report.

    A case that was already corrected with the same mask is reported as unchanged (re-importing a folder is
    harmless); with a different mask it is an error: the review is closed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder}: not a folder of corrections")
    report = ImportReport()
    by_case: Dict[str, List[CorrectedMask]] = {}
    for path in correction_files(folder):
        try:
            correction = read_correction(path, store)
        except CorrectionError as exc:
            report.failed.append(exc)
        else:
            by_case.setdefault(correction.sop_instance_uid, []).append(correction)

    ready: List[CorrectedMask] = []
    for uid, corrections in by_case.items():
        if len(corrections) > 1:
            names = ", ".join(c.origin.name for c in corrections)
            for c in corrections:
                report.failed.append(CorrectionError(c.origin, f"several corrections for case {uid} ({names}); keep one"))
            continue
        correction = corrections[0]
        state = store.get_case(uid).state
        if state == CaseState.CORRECTED and _same_as_stored(correction, store):
            report.unchanged.append((correction.origin, uid))
        elif state != CaseState.REVIEW:
            case = store.get_case(uid)
            why = f"corrected from {case.correction_file} at {case.corrected_at}" if state == CaseState.CORRECTED else "accepted"
            report.failed.append(CorrectionError(correction.origin, f"case {uid} is not waiting for review ({why})"))
        else:
            ready.append(correction)

    committed, refused = store.commit_corrections(ready)
    report.imported.extend((c.origin, c.sop_instance_uid) for c in committed)
    report.failed.extend(CorrectionError(c.origin, reason) for c, reason in refused)
    report.failed.sort(key=lambda error: str(error.path))
    return report
