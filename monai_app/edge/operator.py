# Copyright (c) the dermseg contributors. Apache-2.0.
"""The app's edge-loop step: every written case goes into the edge store (``DERMSEG_EDGE_STORE``)."""

from __future__ import annotations

from pathlib import Path

from monai.deploy.core import Fragment

from operators.case import Case
from operators.case_step import CaseStepOperator

from .store import EdgeStore

__all__ = ["EdgeStoreOperator"]


class EdgeStoreOperator(CaseStepOperator):
    """Records each written case in the edge store: ``accepted`` ones as training samples, ``review`` ones in
    the review queue with their proposed SEG and overlay.

    The store copies what it keeps (OUT may be cleaned later) and ignores a source it already holds, so a
    re-run on the same input adds nothing twice.  A case the store refuses becomes an error entry in
    results.json: its outputs exist, but the site's training data would silently miss it otherwise.

    Named input:  cases, after the writers (each ``ok`` case with pixels, mask, confidence, route, outputs).
    Named output: cases, unchanged but for cases the store refused.
    """

    stage = "edge store"

    def __init__(self, fragment: Fragment, *args, store_path: Path, input_path: Path, output_folder: Path, **kwargs):
        self.store_path = Path(store_path)
        self.input_path = Path(input_path)
        self.output_folder = Path(output_folder)
        self._store: EdgeStore | None = None
        self._added = 0
        super().__init__(fragment, *args, **kwargs)

    def start(self):
        self._store = EdgeStore(self.store_path)

    def stop(self):
        if self._store is not None:
            self._store.close()
            self._store = None

    def _source_path(self, case: Case) -> Path:
        """The DICOM file the outputs reference: the wrapper written to OUT for a plain photo, else the input."""
        if case.wrapped:
            return self.output_folder / case.outputs["source"]
        return self.input_path / case.source_file if self.input_path.is_dir() else self.input_path

    def compute(self, op_input, op_output, context):
        self._added = 0
        super().compute(op_input, op_output, context)
        if self._added:
            self._logger.info("edge store: %d new case(s)", self._added)

    def process(self, case: Case) -> None:
        record = self._store.record_case(
            sop_instance_uid=case.sop_instance_uid,
            study_instance_uid=str(case.source.StudyInstanceUID),
            series_instance_uid=str(case.source.SeriesInstanceUID),
            source_path=self._source_path(case),
            image=case.rgb,
            mask=case.mask,
            confidence=case.confidence,
            route=case.route,
            model_version=case.model.version,
            seg_path=self._output(case, "seg"),
            sr_path=self._output(case, "sr"),
            overlay_path=self._output(case, "overlay_png"),
        )
        self._added += record.added

    def _output(self, case: Case, kind: str):
        relative = case.outputs.get(kind)
        return self.output_folder / relative if relative else None
