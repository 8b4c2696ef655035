# Copyright (c) the dermseg contributors. Apache-2.0.
"""Writer operators: DICOM-SEG, TID 1500 SR, overlays, and results.json, each one step with its own output.

Every case's outputs go to ``OUT/<SOPInstanceUID of the source>/`` (a validated UID, never a value that could
point outside OUT), and every file is written atomically: a temporary name in the same folder, then a rename,
so a run killed at any moment leaves no partial file.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, List, Sequence

import PIL.Image

from monai.deploy.core import Fragment, Operator, OperatorSpec

from . import dicom_outputs as build
from .case import Case, CaseBatch, atomic_write_with, case_output_dir, is_valid_uid
from .case_step import CaseStepOperator
from .conventions import CaseStatus, Route
from .results import OUTPUT_NAMES, case_entry, write_results

__all__ = [
    "CaseWriter",
    "LesionSegWriterOperator",
    "MeasurementReportWriterOperator",
    "OverlayWriterOperator",
    "JoinWritersOperator",
    "ResultsWriterOperator",
    "ReleasePixelsOperator",
    "OUTPUT_NAMES",
    "write_dicom",
]

# The overlay PNG is for people, on a screen: larger overlays are reduced by a whole factor to at most this many
# pixels a side (a camera's 3024 x 2016 to 1512 x 1008).  Pillow's PNG encoder tries five filters on every row,
# and at full size it took 60% of the app's time per camera photo.  The Secondary Capture keeps the full size.
OVERLAY_PNG_MAX_SIDE = 2048


def write_png(rgb, path, max_side: int | None = None) -> None:
    """A lossless PNG at zlib's fastest level (a quarter of the default level's time for files about 20% larger);
    with ``max_side``, an image larger than that is first reduced by the smallest whole factor that fits it."""
    image = PIL.Image.fromarray(rgb)
    factor = -(-max(image.size) // max_side) if max_side else 1
    if factor > 1:
        image = image.reduce(factor)  # box filter over factor x factor blocks: fast, and no aliasing
    image.save(path, format="PNG", compress_level=1)


def write_dicom(dataset, path: Path) -> None:
    atomic_write_with(path, lambda tmp: dataset.save_as(tmp, enforce_file_format=True))


def discard_outputs(output_folder: Path, case: Case) -> None:
    """Remove every output of a failed case: no half set of outputs a reader or a PACS could take for a result."""
    for kind, relative in list(case.outputs.items()):  # a copy: the other writer branch may still add to it
        (output_folder / relative).unlink(missing_ok=True)
        case.outputs.pop(kind, None)
    if is_valid_uid(case.sop_instance_uid):
        try:
            (output_folder / case.sop_instance_uid).rmdir()
        except OSError:
            pass  # not empty: it holds another run's files, which are not this case's to remove


class CaseWriter(CaseStepOperator):
    """Shared shape of the writers: each case's outputs go to ``OUT/<source UID>/``; a failed case leaves none."""

    stage = "writing"

    def __init__(self, fragment: Fragment, *args, output_folder: Path, **kwargs):
        self.output_folder = Path(output_folder)
        super().__init__(fragment, *args, **kwargs)

    def process(self, case: Case) -> None:
        self.write_case(case, case_output_dir(self.output_folder, case))

    def discard(self, case: Case) -> None:
        discard_outputs(self.output_folder, case)

    def _record(self, case: Case, kind: str, path: Path) -> None:
        case.outputs[kind] = path.relative_to(self.output_folder).as_posix()

    def write_case(self, case: Case, folder: Path) -> None:
        raise NotImplementedError


class LesionSegWriterOperator(CaseWriter):
    """Writes the BINARY DICOM-SEG of each lesion (and optionally the FRACTIONAL SEG of its probabilities).

    A plain photo's VL Photographic wrapper is written first, as ``source.dcm``: the SEG references it.

    Named input:  cases (with ``mask``, ``probability``, ``model``, and ``route``: a review SEG is marked).
    Named outputs: cases, ``outputs`` gaining ``seg`` (and ``source``, ``seg_probability``); segs, the chunk's
    BINARY SEG datasets by source SOPInstanceUID, which the measurement report references.
    """

    stage = "writing the DICOM-SEG"

    side_outputs = ("segs",)

    def __init__(self, fragment: Fragment, *args, output_folder: Path, write_probability_seg: bool = True, **kwargs):
        self.write_probability_seg = bool(write_probability_seg)
        self._segs: Dict[str, object] = {}
        super().__init__(fragment, *args, output_folder=output_folder, **kwargs)

    def begin_chunk(self, op_input) -> None:
        self._segs = {}

    def end_chunk(self, op_output) -> None:
        op_output.emit(self._segs, "segs")

    def write_case(self, case: Case, folder: Path) -> None:
        if case.wrapped:
            path = folder / OUTPUT_NAMES["source"]
            write_dicom(case.source, path)
            self._record(case, "source", path)
        seg = build.build_binary_seg(case.source, case.mask, case.model, needs_review=case.route == Route.REVIEW)
        path = folder / OUTPUT_NAMES["seg"]
        write_dicom(seg, path)
        self._record(case, "seg", path)
        if self.write_probability_seg:
            path = folder / OUTPUT_NAMES["seg_probability"]
            write_dicom(build.build_fractional_seg(case.source, case.probability, case.model), path)
            self._record(case, "seg_probability", path)
        self._segs[case.sop_instance_uid] = seg  # once the case's SEGs are all written


class MeasurementReportWriterOperator(CaseWriter):
    """Writes the TID 1500 SR: lesion area (mm2 with pixel spacing, else pixels) and confidence, per SEG segment.

    Named inputs: cases (with ``mask`` and ``confidence``); segs, from the SEG writer.
    Named output: cases; ``outputs["sr"]`` and ``lesion_area_mm2`` or ``lesion_area_px`` set.
    """

    stage = "writing the measurement report"

    side_inputs = ("segs",)

    def begin_chunk(self, op_input) -> None:
        self._segs: Dict[str, object] = op_input.receive("segs")

    def write_case(self, case: Case, folder: Path) -> None:
        seg = self._segs[case.sop_instance_uid]
        area, unit = build.lesion_area(case.source, case.mask)
        if unit == "mm2":
            case.lesion_area_mm2 = round(area, 3)
        else:
            case.lesion_area_px = int(area)
        sr = build.build_measurement_report(case.source, seg, case.model, area, unit, case.confidence)
        path = folder / OUTPUT_NAMES["sr"]
        write_dicom(sr, path)
        self._record(case, "sr", path)


class OverlayWriterOperator(CaseWriter):
    """Writes the overlay for people (PNG) and for PACS viewers that cannot draw a SEG (Secondary Capture).

    Named input:  cases (with ``rgb`` and ``mask``).
    Named output: cases; ``outputs`` gains ``overlay_png`` and ``overlay_sc``.
    """

    stage = "writing the overlay"

    def write_case(self, case: Case, folder: Path) -> None:
        overlay = build.overlay_rgb(case.rgb, case.mask)
        path = folder / OUTPUT_NAMES["overlay_png"]
        atomic_write_with(path, lambda tmp: write_png(overlay, tmp, max_side=OVERLAY_PNG_MAX_SIDE))
        self._record(case, "overlay_png", path)
        path = folder / OUTPUT_NAMES["overlay_sc"]
        write_dicom(build.build_overlay_sc(case.source, overlay, case.model), path)
        self._record(case, "overlay_sc", path)


class JoinWritersOperator(Operator):
    """Passes a chunk on once every writer branch has finished it.

    The SEG/SR branch and the overlay branch write the same cases independently.  A case that failed in one
    branch loses the outputs the other wrote too, so what goes on is each case's whole set of outputs or none.

    Named inputs: one per branch (``branches``), each the same chunk of cases.
    Named output: cases.
    """

    def __init__(self, fragment: Fragment, *args, output_folder: Path, branches: Sequence[str], **kwargs):
        self.output_folder = Path(output_folder)
        self.branches = tuple(branches)
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        for branch in self.branches:
            spec.input(branch)
        spec.output("cases")

    def compute(self, op_input, op_output, context):
        chunks = [op_input.receive(branch) for branch in self.branches]
        cases: CaseBatch = chunks[0]
        if any(len(chunk) != len(cases) for chunk in chunks):
            raise RuntimeError(f"writer branches {self.branches} delivered chunks of different lengths")
        for case in cases:
            if not case.ok:
                discard_outputs(self.output_folder, case)
        op_output.emit(cases, "cases")


class ResultsWriterOperator(Operator):
    """Records every case, whatever its status, in ``OUT/results.json`` (:mod:`operators.results`).

    The file is rewritten (atomically) after every chunk, so it is complete after the last one and, if the run is
    killed, still a valid record of everything finished so far.

    Named input:  cases.
    Named output: cases, unchanged.
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
        spec.output("cases")

    def compute(self, op_input, op_output, context):
        cases: CaseBatch = op_input.receive("cases")
        for case in cases:
            self.entries.append(case_entry(case))
            if not case.ok:
                self._logger.warning("case %d %s: %s", len(self.entries), case.status, "see results.json")
        write_results(self.output_folder, self.entries, self.settings)
        counts = {str(s): sum(e["status"] == s for e in self.entries) for s in CaseStatus}
        self._logger.info("results.json: %d case(s) so far %s", len(self.entries), counts)
        if getattr(cases, "last", False):
            self.finished = True
        op_output.emit(cases, "cases")


class ReleasePixelsOperator(Operator):
    """The pipeline's last step: drops each case's arrays, so a long batch never holds every image in memory.

    Named input: cases.
    """

    def setup(self, spec: OperatorSpec):
        spec.input("cases")

    def compute(self, op_input, op_output, context):
        for case in op_input.receive("cases"):
            case.release_pixels()
