# Copyright (c) the dermseg contributors. Apache-2.0.
"""Writer operators: DICOM-SEG, TID 1500 SR, overlays, and results.json, each one step with its own output.

Every case's outputs go to ``OUT/<SOPInstanceUID of the source>/`` (a validated UID, never a value that could
point outside OUT), and every file is written atomically: a temporary name in the same folder, then a rename,
so a run killed at any moment leaves no partial file.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Dict, List

import numpy as np
import PIL.Image

from monai.deploy.core import Fragment, Operator, OperatorSpec

from .case import Case, atomic_write_bytes, atomic_write_with, case_output_dir, is_valid_uid
from .case_step import CaseStepOperator
from .dicom_outputs import (
    build_binary_seg,
    build_fractional_seg,
    build_measurement_report,
    build_overlay_sc,
    lesion_area,
    overlay_rgb,
)

__all__ = [
    "LesionSegWriterOperator",
    "MeasurementReportWriterOperator",
    "OverlayWriterOperator",
    "ResultsWriterOperator",
    "OUTPUT_NAMES",
    "RESULTS_FILE",
    "write_dicom",
]

# File names inside a case's folder: fixed names, nothing taken from the input.
OUTPUT_NAMES = {
    "source": "source.dcm",
    "seg": "seg.dcm",
    "seg_probability": "seg_probability.dcm",
    "sr": "sr.dcm",
    "overlay_png": "overlay.png",
    "overlay_sc": "overlay_sc.dcm",
}
RESULTS_FILE = "results.json"


def write_png(rgb, path) -> None:
    """A lossless PNG at zlib's fastest level: a quarter of the default level's time for files about 20% larger."""
    PIL.Image.fromarray(rgb).save(path, format="PNG", compress_level=1)


def write_dicom(dataset, path: Path) -> None:
    atomic_write_with(path, lambda tmp: dataset.save_as(tmp, enforce_file_format=True))


class _CaseWriter(CaseStepOperator):
    """Shared shape of the writers: each case's outputs go to ``OUT/<source UID>/``; a failed case leaves none."""

    stage = "writing"

    def __init__(self, fragment: Fragment, *args, output_folder: Path, **kwargs):
        self.output_folder = Path(output_folder)
        super().__init__(fragment, *args, **kwargs)

    def process(self, case: Case) -> None:
        self.write_case(case, case_output_dir(self.output_folder, case))

    def discard(self, case: Case) -> None:
        """A failed case leaves nothing behind: no half set of outputs a reader or a PACS could take for a result."""
        for relative in case.outputs.values():
            (self.output_folder / relative).unlink(missing_ok=True)
        case.outputs.clear()
        if is_valid_uid(case.sop_instance_uid):
            try:
                (self.output_folder / case.sop_instance_uid).rmdir()
            except OSError:
                pass  # not empty: it holds another run's files, which are not this case's to remove

    def _record(self, case: Case, kind: str, path: Path) -> None:
        case.outputs[kind] = path.relative_to(self.output_folder).as_posix()

    def write_case(self, case: Case, folder: Path) -> None:
        raise NotImplementedError


class LesionSegWriterOperator(_CaseWriter):
    """Writes the BINARY DICOM-SEG of each lesion (and optionally the FRACTIONAL SEG of its probabilities).

    A plain photo's VL Photographic wrapper is written first, as ``source.dcm``: the SEG references it.

    Named input:  cases (with ``mask``, ``probability``, ``model``).
    Named output: cases; ``outputs`` gains ``seg`` (and ``source``, ``seg_probability``), ``written["seg"]``.
    """

    stage = "writing the DICOM-SEG"

    def __init__(self, fragment: Fragment, *args, output_folder: Path, write_probability_seg: bool = True, **kwargs):
        self.write_probability_seg = bool(write_probability_seg)
        super().__init__(fragment, *args, output_folder=output_folder, **kwargs)

    def write_case(self, case: Case, folder: Path) -> None:
        if case.wrapped:
            path = folder / OUTPUT_NAMES["source"]
            write_dicom(case.source, path)
            self._record(case, "source", path)
        seg = build_binary_seg(case.source, case.mask, case.model)
        path = folder / OUTPUT_NAMES["seg"]
        write_dicom(seg, path)
        self._record(case, "seg", path)
        case.written["seg"] = seg
        if self.write_probability_seg:
            path = folder / OUTPUT_NAMES["seg_probability"]
            write_dicom(build_fractional_seg(case.source, case.probability, case.model), path)
            self._record(case, "seg_probability", path)


class MeasurementReportWriterOperator(_CaseWriter):
    """Writes the TID 1500 SR: lesion area (mm2 with pixel spacing, else pixels) and confidence, per SEG segment.

    Named input:  cases (with ``mask``, ``confidence`` and ``written["seg"]``).
    Named output: cases; ``outputs["sr"]`` and ``lesion_area_mm2`` or ``lesion_area_px`` set.
    """

    stage = "writing the measurement report"

    def write_case(self, case: Case, folder: Path) -> None:
        area, unit = lesion_area(case.source, case.mask)
        if unit == "mm2":
            case.lesion_area_mm2 = round(area, 3)
        else:
            case.lesion_area_px = int(area)
        sr = build_measurement_report(case.source, case.written["seg"], case.model, area, unit, case.confidence)
        path = folder / OUTPUT_NAMES["sr"]
        write_dicom(sr, path)
        self._record(case, "sr", path)


class OverlayWriterOperator(_CaseWriter):
    """Writes the overlay for people (PNG) and for PACS viewers that cannot draw a SEG (Secondary Capture).

    Named input:  cases (with ``rgb`` and ``mask``).
    Named output: cases; ``outputs`` gains ``overlay_png`` and ``overlay_sc``.
    """

    stage = "writing the overlay"

    def write_case(self, case: Case, folder: Path) -> None:
        overlay = overlay_rgb(case.rgb, case.mask)
        path = folder / OUTPUT_NAMES["overlay_png"]
        atomic_write_with(path, lambda tmp: write_png(overlay, tmp))
        self._record(case, "overlay_png", path)
        path = folder / OUTPUT_NAMES["overlay_sc"]
        write_dicom(build_overlay_sc(case.source, overlay, case.model), path)
        self._record(case, "overlay_sc", path)


def case_entry(case: Case) -> Dict:
    """One case as results.json shows it."""
    entry = {
        "source_file": case.source_file,
        "source_sop_instance_uid": case.sop_instance_uid if case.status != "skipped" else None,
        "status": case.status,
        "error": case.error,
        "confidence": None if case.confidence is None else round(float(case.confidence), 4),
        "route": case.route,
        "outputs": dict(case.outputs) if case.ok else {},
    }
    if case.lesion_area_mm2 is not None:
        entry["lesion_area_mm2"] = case.lesion_area_mm2
    else:
        entry["lesion_area_px"] = case.lesion_area_px
    if case.model is not None:
        entry["model"] = {"name": case.model.name, "version": case.model.version}
    return entry


class ResultsWriterOperator(Operator):
    """Records every case, whatever its status, in ``OUT/results.json`` and frees the case's pixels.

    The file is rewritten (atomically) after every chunk, so it is complete after the last one and, if the run is
    killed, still a valid record of everything finished so far.

    Named input: cases.
    """

    def __init__(self, fragment: Fragment, *args, output_folder: Path, settings: Dict | None = None, **kwargs):
        self.output_folder = Path(output_folder)
        self.settings = dict(settings or {})
        self.entries: List[Dict] = []
        self.finished = False  # True once the loader's last batch is recorded: the batch ran to its end
        self._logger = logging.getLogger(f"{__name__}.{type(self).__name__}")
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.input("cases")

    def compute(self, op_input, op_output, context):
        cases: List[Case] = op_input.receive("cases")
        for case in cases:
            self.entries.append(case_entry(case))
            if not case.ok:
                self._logger.warning("case %d %s: %s", len(self.entries), case.status, "see results.json")
            case.release_pixels()
        self.write()
        if getattr(cases, "last", False):
            self.finished = True

    def write(self) -> None:
        document = {"cases": self.entries}
        if self.settings:
            document["settings"] = self.settings
        data = json.dumps(document, indent=2, default=_json_default).encode("utf-8")
        atomic_write_bytes(self.output_folder / RESULTS_FILE, data)
        counts = {s: sum(e["status"] == s for e in self.entries) for s in ("ok", "error", "skipped")}
        self._logger.info("results.json: %d case(s) so far %s", len(self.entries), counts)


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    return str(value)
