# Copyright (c) the dermseg contributors. Apache-2.0.
"""Real, small test data for the edge store: RGB photos, masks, DMS source DICOMs and corrected DICOM-SEGs.

Also a child-process entry point for the crash tests (``python tests/_edge_helpers.py record ...``): it records
cases in a loop until the parent kills it with SIGKILL.  It imports nothing heavier than numpy, Pillow and
pydicom, so it starts fast and the kill lands while it writes.
"""

from __future__ import annotations

import hashlib
import os
import signal
import sys
from pathlib import Path
from typing import Optional, Tuple

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # when run as a child script
    sys.path.insert(0, str(REPO_ROOT))

DERMOSCOPIC_PHOTOGRAPHY_STORAGE = "1.2.840.10008.5.1.4.1.1.77.1.7"
MODEL_VERSION = "0.1.0"


def case_uids(index: int) -> Tuple[str, str, str]:
    """(study, series, SOP instance) UIDs of test case ``index``: stable, so re-runs see the same cases."""
    base = int(hashlib.sha256(f"dermseg-edge-test-{index}".encode()).hexdigest()[:24], 16)
    return f"2.25.{base}1", f"2.25.{base}2", f"2.25.{base}3"


def case_pixels(index: int, shape: Tuple[int, int] = (24, 32)) -> Tuple[np.ndarray, np.ndarray]:
    """A reproducible RGB photo (H, W, 3) uint8 with a dark ellipse, and its (H, W) {0, 1} mask."""
    rng = np.random.default_rng(index)
    rows, columns = shape
    yy, xx = np.mgrid[:rows, :columns]
    cy, cx = rows / 2 + rng.uniform(-2, 2), columns / 2 + rng.uniform(-2, 2)
    mask = (((yy - cy) / (rows / 3)) ** 2 + ((xx - cx) / (columns / 3)) ** 2 <= 1).astype(np.uint8)
    rgb = np.clip(rng.normal(200, 10, (rows, columns, 3)), 0, 255).astype(np.uint8)
    rgb[mask > 0] = (rgb[mask > 0] * 0.4).astype(np.uint8)
    return rgb, mask


def write_dms(path: Path, rgb: np.ndarray, index: int, pixel_spacing: Optional[float] = None, study: Optional[str] = None):
    """Write ``rgb`` as a Dermoscopic Photography Image (DMS) with what highdicom needs of a SEG source; with
    ``pixel_spacing`` (mm) a calibrated photo, with ``study`` in that study instead of the case's own."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    study_uid, series, sop = case_uids(index)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DERMOSCOPIC_PHOTOGRAPHY_STORAGE
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = DERMOSCOPIC_PHOTOGRAPHY_STORAGE, sop
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid if study is None else study, series
    ds.Modality = "DMS"
    # highdicom needs these on a SEG's source (empty values are fine)
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Test^Edge", f"EDGE{index}", "", ""
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20260101", "120000", "1", ""
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PatientOrientation = ""
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.Rows, ds.Columns = rgb.shape[:2]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.ascontiguousarray(rgb, dtype=np.uint8).tobytes()
    if pixel_spacing is not None:
        ds.PixelSpacing = [pixel_spacing, pixel_spacing]
    ds.save_as(path, enforce_file_format=True)
    return ds


def write_seg(path: Path, source_path: Path, mask: np.ndarray, label: str = "Skin lesion",
              extra_segment: Optional[np.ndarray] = None, fractional: bool = False, manufacturer: str = "Test reviewer"):
    """A corrected DICOM-SEG of ``mask`` referencing the source, as a viewer saves it (built with highdicom).

    OHIF's: ``label="Segment 1"`` (its segmented property type is then Tissue), ``manufacturer="OHIF"``, from a
    source with Pixel Spacing (highdicom then writes Pixel Measures without a Slice Thickness).  Returns the SEG.

    ``extra_segment`` adds a second segment labelled "Ruler" (not a lesion) to check segment selection;
    ``fractional`` writes a FRACTIONAL SEG of ``mask`` as probabilities in [0, 1].
    """
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    source = pydicom.dcmread(source_path)
    category = hd.sr.CodedConcept("49755003", "SCT", "Morphologically abnormal structure")
    lesion = hd.sr.CodedConcept("95324001", "SCT", "Skin lesion") if "lesion" in label.lower() else codes.SCT.Tissue
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=1, segment_label=label, segmented_property_category=category,
            segmented_property_type=lesion, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )
    ]
    pixels = np.asarray(mask, dtype=np.float32 if fractional else np.uint8)[None, :, :, None]
    if extra_segment is not None:
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=2, segment_label="Ruler", segmented_property_category=codes.SCT.Tissue,
                segmented_property_type=codes.SCT.Tissue, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
            )
        )
        pixels = np.concatenate([pixels, np.asarray(extra_segment, dtype=np.uint8)[None, :, :, None]], axis=-1)
    seg = hd.seg.Segmentation(
        source_images=[source], pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL if fractional else hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=100,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer=manufacturer, manufacturer_model_name="manual",
        software_versions="1", device_serial_number="1", omit_empty_frames=False,
    )
    seg.PatientOrientation = source.get("PatientOrientation", "")  # type 2C for a photograph's SEG (dciodvfy)
    seg.save_as(path)
    return seg


def record_test_case(store, work: Path, index: int, route: str = "accepted", model_version: str = MODEL_VERSION,
                     shape: Tuple[int, int] = (24, 32), with_seg: bool = False):
    """Build case ``index`` (photo, mask, DMS source, optional SEG) in ``work`` and record it in ``store``."""
    work.mkdir(parents=True, exist_ok=True)
    study, series, sop = case_uids(index)
    rgb, mask = case_pixels(index, shape)
    source = work / f"{sop}.dcm"
    if not source.exists():
        write_dms(source, rgb, index)
    seg_path = None
    if with_seg:
        seg_path = work / f"{sop}.seg.dcm"
        if not seg_path.exists():
            write_seg(seg_path, source, mask)
    return store.record_case(
        sop_instance_uid=sop, study_instance_uid=study, series_instance_uid=series, source_path=source,
        image=rgb, mask=mask, confidence=0.9 if route == "accepted" else 0.3, route=route,
        model_version=model_version, seg_path=seg_path,
    )


def _child_record(store_dir: str, work: str, count: int, kill_before_commit_at: int) -> None:
    """Record cases 0..count-1 (even accepted, odd review); optionally SIGKILL itself just before a commit."""
    import pydicom  # noqa: F401  (imported before "ready": the store imports it on its first record)

    from monai_app.edge.store import EdgeStore

    class CrashingStore(EdgeStore):
        def _before_commit(self, sop_instance_uid):
            if sop_instance_uid == case_uids(kill_before_commit_at)[2]:
                os.kill(os.getpid(), signal.SIGKILL)  # files renamed into place, row not committed

    # Build every source first, so the parent's kill lands in the store's writes, not in test-data making.
    Path(work).mkdir(parents=True, exist_ok=True)
    for index in range(count):
        study, series, sop = case_uids(index)
        source = Path(work) / f"{sop}.dcm"
        if not source.exists():
            write_dms(source, case_pixels(index)[0], index)
    with CrashingStore(store_dir) as store:
        print("ready", flush=True)
        for index in range(count):
            record_test_case(store, Path(work), index, route="accepted" if index % 2 == 0 else "review")
    print("done", flush=True)


if __name__ == "__main__":
    if len(sys.argv) != 6 or sys.argv[1] != "record":
        sys.exit("usage: _edge_helpers.py record STORE WORK COUNT KILL_BEFORE_COMMIT_AT (-1: never)")
    _child_record(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
