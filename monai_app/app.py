# Copyright (c) the dermseg contributors. Apache-2.0.
"""The skin-lesion segmentation application: photos in, DICOM-SEG, SR, overlays and results.json out."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from holoscan.schedulers import EventBasedScheduler
from monai.deploy.core import Application

from operators import (
    ConfidenceRoutingOperator,
    JoinWritersOperator,
    LesionSegmentationOperator,
    LesionSegWriterOperator,
    MeasurementReportWriterOperator,
    OverlayWriterOperator,
    ReleasePixelsOperator,
    ResultsWriterOperator,
    SkinPhotoLoaderOperator,
)

from .edge.operator import EdgeStoreOperator
from .settings import AppSettings

__all__ = ["SkinLesionSegApp"]

# Writers that need nothing but the routed cases, by branch name: each runs as its own branch beside the SEG/SR
# branch and joins before the results are recorded.  A new output is a writer (a subclass of
# operators.writers.CaseWriter) in its own module and one entry here.
INDEPENDENT_WRITERS = {"overlays": OverlayWriterOperator}

# Cases the loader emits at a time: enough to keep the graph's per-chunk cost small, few enough to bound the
# memory that full-size photos and their probability maps take.  A chunk also ends once its photos hold a camera
# photo's pixels, so eight dermoscopy images (765 x 575) make a chunk and a camera photo goes alone: with the
# scheduler's threads several chunks are in flight, and 20 camera photos peaked at 1.2 GB in chunks of one against
# 1.9 GB in chunks of eight, in less time (the README's Performance section).
PIPELINE_CHUNK = 8
PIPELINE_CHUNK_PIXELS = 3024 * 2016

# Worker threads of the graph's scheduler: with two, the model (whose ONNX Runtime call releases the GIL) works on
# one chunk while the loader and the writers, which hold it, work on the chunks beside it: 60 cases took 17.7 s
# against 19.7 s with one thread, camera photos a third less time (the README's Performance section).  A third
# thread added nothing, as the loader and the writers share one GIL.
SCHEDULER_WORKERS = 2


class SkinLesionSegApp(Application):
    """Segments the skin lesion in every dermoscopy image or photo under the input folder.

    Input: DICOM Dermoscopic Photography (DMS), VL Photographic (XC), RGB Secondary Capture, plain JPEG/PNG
    photos, in any folder layout.  Output, per image in ``OUT/<SOPInstanceUID>/``: a BINARY DICOM-SEG, a
    FRACTIONAL (probability) SEG, a TID 1500 SR with the lesion area and the confidence, an overlay PNG and
    a burned-in overlay Secondary Capture (plus ``source.dcm``, the DICOM wrapper of a plain photo); and
    ``OUT/results.json`` with one entry per input file, its confidence and its route (accepted | review).
    """

    def __init__(self, *args, settings: Optional[AppSettings] = None, **kwargs):
        self._logger = logging.getLogger(f"{__name__}.{type(self).__name__}")
        self.settings = settings or AppSettings.from_env()
        self.results_writer: Optional[ResultsWriterOperator] = None
        super().__init__(*args, **kwargs)
        self.scheduler(EventBasedScheduler(self, worker_thread_number=SCHEDULER_WORKERS, name="scheduler"))

    def run(self, *args, **kwargs):
        self._logger.info("Begin %s", self.run.__name__)
        super().run(*args, **kwargs)
        self._logger.info("End %s", self.run.__name__)

    @property
    def finished(self) -> bool:
        """True once every input file has its entry in results.json."""
        return self.results_writer is not None and self.results_writer.finished

    def compose(self):
        app_context = Application.init_app_context(self.argv)
        # highdicom logs every attribute module it copies at INFO: keep the default log about the batch
        logging.getLogger("highdicom").setLevel(max(logging.WARNING, logging.getLogger().level))
        input_path = Path(app_context.input_path)
        output_folder = Path(app_context.output_path)
        model_path = Path(app_context.model_path)
        settings = self.settings

        # The loader is the source: it stops itself after the last file (a CountCondition cannot know how many
        # chunks a folder makes), and every operator after it runs once per chunk of cases.  A chunk holds up to
        # max(PIPELINE_CHUNK, batch size) cases, fewer once they reach PIPELINE_CHUNK_PIXELS; the model's batch
        # (cases per model call) is a separate setting.
        load_photos = SkinPhotoLoaderOperator(
            self, input_path=input_path, chunk_size=max(PIPELINE_CHUNK, settings.batch_size),
            chunk_pixels=PIPELINE_CHUNK_PIXELS, exclude=output_folder, name="load_photos",
        )
        segment_lesions = LesionSegmentationOperator(
            self, model_path=model_path, batch_size=settings.batch_size, flip_tta=settings.flip_tta,
            precision=settings.model_precision,
            name="segment_lesions",
        )
        score_confidence = ConfidenceRoutingOperator(
            self, threshold=settings.confidence_threshold, measure=settings.confidence_measure, name="score_confidence"
        )
        write_seg = LesionSegWriterOperator(
            self, output_folder=output_folder, write_probability_seg=settings.write_probability_seg, name="write_seg"
        )
        write_sr = MeasurementReportWriterOperator(self, output_folder=output_folder, name="write_sr")
        writers = {
            name: writer(self, output_folder=output_folder, name=f"write_{name}")
            for name, writer in INDEPENDENT_WRITERS.items()
        }
        join_writers = JoinWritersOperator(
            self, output_folder=output_folder, branches=("reports", *writers), name="join_writers"
        )
        self.results_writer = write_results = ResultsWriterOperator(
            self, output_folder=output_folder, settings=settings.for_results(), name="write_results"
        )
        release_pixels = ReleasePixelsOperator(self, name="release_pixels")

        self.add_flow(load_photos, segment_lesions, {("cases", "cases")})
        self.add_flow(segment_lesions, score_confidence, {("cases", "cases")})
        # independent writer branches from the routed cases: the SEG, then the SR that references it; the others
        self.add_flow(score_confidence, write_seg, {("cases", "cases")})
        self.add_flow(write_seg, write_sr, {("cases", "cases"), ("segs", "segs")})
        self.add_flow(write_sr, join_writers, {("cases", "reports")})
        for name, writer in writers.items():
            self.add_flow(score_confidence, writer, {("cases", "cases")})
            self.add_flow(writer, join_writers, {("cases", name)})
        written = join_writers
        if settings.edge_store:
            # the edge loop: accepted cases become training samples, review cases wait for a person; a case the
            # store refuses becomes an error entry, so it runs before the results are recorded
            store_cases = EdgeStoreOperator(
                self, store_path=settings.edge_store, input_path=input_path, output_folder=output_folder,
                name="store_cases",
            )
            self.add_flow(join_writers, store_cases, {("cases", "cases")})
            written = store_cases
        self.add_flow(written, write_results, {("cases", "cases")})
        self.add_flow(write_results, release_pixels, {("cases", "cases")})
        # Sending to the PACS (DERMSEG_SEND_TO) needs the finished results.json: it runs after the graph (__main__).


if __name__ == "__main__":
    SkinLesionSegApp().run()
