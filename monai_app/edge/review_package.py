# Copyright (c) the dermseg contributors. Apache-2.0.
"""The review package the edge hands to the institution: what to check, and how to send corrections back.

The package is built beside its destination and renamed into place, so a reviewer never sees half a package.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import PIL.Image

from networks.durable import partial_name
from operators.conventions import utc_timestamp

from .schema import EdgeStoreError

__all__ = ["export_review_package", "build_review_package", "README_TEXT"]

README_TEXT = """\
Skin-lesion segmentations waiting for review
============================================

The model was not confident about the cases in this package.  Each folder is named by the SOP Instance UID of
the source image and holds:

  source.dcm          the source image (DICOM; open it in your viewer)
  proposed_seg.dcm    the model's proposed segmentation (DICOM-SEG), where the edge app wrote one
  overlay.png         the photo with the proposed lesion outline, to judge it at a glance
  proposed_mask.png   the proposed mask (white = lesion, black = background), same size as the source
  image.png           the source photo as plain PNG, for editors that do not read DICOM

manifest.json lists the cases with their confidence and the model version that made each proposal.

Sending corrections back
------------------------
Put ONE correction per case into a new, empty folder (not this one), in either form:

  * a PNG mask named <SOPInstanceUID>.png (for example 1.2.3.4.png), exactly as large as the source image:
    anything non-black is lesion, black is background.  Editing a copy of proposed_mask.png and saving it
    under the case's UID is the quickest way.
  * a DICOM-SEG saved by your viewer (3D Slicer, OHIF, ...) that references the source image.  The segment(s)
    labelled as skin lesion are used (SNOMED CT 95324001, or a label containing "lesion"); where no segment is
    so labelled, the union of all segments is the lesion.

Return the folder to the edge operator, who runs

  python -m monai_app.edge --store STORE import-corrections FOLDER

Every file is checked against its source (size, referenced UID, case still waiting); a bad file is reported by
name with the problem and the good ones are imported.  A case that needs no change can be returned as is: send
proposed_mask.png renamed to <SOPInstanceUID>.png.
"""


def _overlay(image_path: Path, mask_path: Path) -> PIL.Image.Image:
    """A simple red tint of the proposed lesion, for cases the app sent without its own overlay."""
    with PIL.Image.open(image_path) as im:
        rgb = np.asarray(im.convert("RGB"), dtype=np.float32)
    with PIL.Image.open(mask_path) as im:
        lesion = np.asarray(im.convert("L")) > 0
    rgb[lesion] = 0.6 * rgb[lesion] + 0.4 * np.array([255.0, 0.0, 0.0])
    return PIL.Image.fromarray(np.clip(rgb + 0.5, 0, 255).astype(np.uint8))


def build_review_package(cases: Sequence, folder: Path, model_version: Optional[str]) -> dict:
    """Write one sub-folder per waiting case plus ``manifest.json`` and ``README.txt`` into ``folder``."""
    folder.mkdir(parents=True)
    entries = []
    for case in cases:
        case_folder = folder / case.sop_instance_uid
        case_folder.mkdir()
        files = {}
        for kind, name in (("source", "source.dcm"), ("seg", "proposed_seg.dcm"), ("mask", "proposed_mask.png"),
                           ("image", "image.png"), ("overlay", "overlay.png")):
            if kind in case.files:
                shutil.copyfile(case.files[kind], case_folder / name)
                files[kind] = f"{case.sop_instance_uid}/{name}"
        if "overlay" not in files:
            _overlay(case.files["image"], case.files["mask"]).save(case_folder / "overlay.png")
            files["overlay"] = f"{case.sop_instance_uid}/overlay.png"
        entries.append(
            {
                "sop_instance_uid": case.sop_instance_uid,
                "study_instance_uid": case.study_instance_uid,
                "series_instance_uid": case.series_instance_uid,
                "rows": case.rows,
                "columns": case.columns,
                "confidence": case.confidence,
                "model_version": case.model_version,
                "recorded_at": case.recorded_at,
                "files": files,
                "return_correction_as": f"{case.sop_instance_uid}.png or a DICOM-SEG referencing the source",
            }
        )
    manifest = {
        "kind": "dermseg edge review package",
        "created_at": utc_timestamp(),
        "active_model_version": model_version,
        "cases": entries,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    (folder / "README.txt").write_text(README_TEXT)
    return manifest


def export_review_package(cases: Sequence, out_folder, model_version: Optional[str]) -> dict:
    """Write the review package of ``cases`` into ``out_folder`` (new or empty); return its manifest.

    The package is built in a temporary folder beside ``out_folder`` and renamed into place.
    """
    out_folder = Path(out_folder).absolute()
    if out_folder.exists() and (not out_folder.is_dir() or any(out_folder.iterdir())):
        raise EdgeStoreError(f"{out_folder} exists and is not an empty folder; choose a new one")
    out_folder.parent.mkdir(parents=True, exist_ok=True)
    staging = partial_name(out_folder)
    try:
        manifest = build_review_package(cases, staging, model_version)
        if out_folder.exists():
            out_folder.rmdir()
        os.rename(staging, out_folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest
