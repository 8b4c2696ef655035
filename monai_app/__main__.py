# Copyright (c) the dermseg contributors. Apache-2.0.
"""``python -m monai_app -i IN -o OUT [-m MODEL]`` (or HOLOSCAN_INPUT_PATH / _OUTPUT_PATH / _MODEL_PATH).

Exit status: 0 when the batch ran (whatever single files failed: results.json says which and why), 2 when it
could not start (bad setting, no model, unwritable OUT), 1 when it stopped part way.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Tuple

from .startup import leave_out_unused_packages

if __name__ == "__main__":  # the program, not an import of it
    leave_out_unused_packages()

import pydicom.config  # noqa: E402

from monai.deploy.core import parse_args  # noqa: E402
from monai.deploy.core.runtime_env import RuntimeEnv  # noqa: E402

from operators.case import remove_partial_files  # noqa: E402
from operators.model import resolve_model_file  # noqa: E402

from .app import SkinLesionSegApp  # noqa: E402
from .edge import EdgeStore  # noqa: E402
from .pacs import review_selection, send_outputs  # noqa: E402
from .settings import DEFAULT_MODEL_PATH, AppSettings, apply_app_config_defaults  # noqa: E402


def _default_model(settings: AppSettings) -> Path:
    """The model when neither -m nor HOLOSCAN_MODEL_PATH names one: the edge store's active model where the
    store has one installed (``python -m monai_app.edge install-model``), else the training bundle's export."""
    if settings.edge_store is not None and (settings.edge_store / "edge.sqlite").exists():
        with EdgeStore(settings.edge_store, create=False) as store:
            active = store.active_model_path()
        if active is not None:
            return active
    return DEFAULT_MODEL_PATH


def _preflight(argv) -> Tuple[AppSettings, Path]:
    """Check what the run needs before starting the graph, with a message a person can act on; the settings and
    the input path."""
    apply_app_config_defaults()  # app.yaml's dermseg: section inside a MAP; the environment overrides it
    settings = AppSettings.from_env()  # checks the send targets and options too, before any inference
    if "HOLOSCAN_MODEL_PATH" not in os.environ:
        os.environ["HOLOSCAN_MODEL_PATH"] = str(_default_model(settings))  # -m still takes precedence
    args = parse_args(argv)  # the SDK's own parser: exits 2 on a missing -i / -m path
    env = RuntimeEnv()
    input_path = Path(args.input or env.input)
    output_folder = Path(args.output or env.output)
    if not input_path.exists():
        raise FileNotFoundError(f"input {input_path} does not exist")
    try:
        resolve_model_file(args.model or env.model)  # only TorchScript or ONNX is ever loaded, never a pickle
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{exc}; pass -m MODEL (model.onnx or model.ts exported by training_bundle, or their folder)") from None
    output_folder.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.NamedTemporaryFile(dir=output_folder, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise PermissionError(f"output folder {output_folder} is not writable: {exc.strerror}") from None
    # a run killed mid-write left temporary files: this run rewrites every output, the leftovers only mislead
    removed = remove_partial_files(output_folder)
    if removed:
        logging.getLogger("monai_app").info("removed %d partial file(s) a stopped run left in OUT", removed)
    return settings, input_path


class _NoPatientNameRecords(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "patient_name" not in record.getMessage()


def _keep_patient_data_out_of_logs() -> None:
    """The libraries quote attribute values in their warnings: highdicom a patient name without a '^' (common:
    "John Smith"), pydicom any value that breaks its VR's rules.  At the default level the log holds no patient
    data, so those warnings are off; the loader checks the values the app relies on and reports in results.json.
    """
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    warnings.filterwarnings("ignore", message=r"The string .* is unlikely to represent the intended person name")
    logging.getLogger("highdicom").addFilter(_NoPatientNameRecords())


def main(argv=None) -> int:
    argv = list(sys.argv if argv is None else argv)
    _keep_patient_data_out_of_logs()
    try:
        settings, input_path = _preflight(argv)
    except (ValueError, OSError) as exc:
        print(f"monai_app: cannot run: {exc}", file=sys.stderr)
        return 2
    # Holoscan's own scheduler chatter at INFO says nothing a site needs; its warnings and errors still show.
    os.environ.setdefault("HOLOSCAN_LOG_LEVEL", "WARN")
    app = SkinLesionSegApp(settings=settings)
    try:
        app.run()
    except Exception as exc:
        logging.getLogger("monai_app").error("the batch stopped: %s: %s", type(exc).__name__, exc)
        return 1
    if not app.finished:
        print("monai_app: the batch did not run to its end; see the log", file=sys.stderr)
        return 1
    entries = app.results_writer.entries
    counts = ", ".join(f"{sum(e['status'] == s for e in entries)} {s}" for s in ("ok", "error", "skipped"))
    review = sum(e.get("route") == "review" for e in entries)
    logging.getLogger("monai_app").info(
        "batch done: %d file(s): %s; %d for review; see %s", len(entries), counts, review,
        app.results_writer.output_folder / "results.json",
    )
    log = logging.getLogger("monai_app")
    if settings.send_to:
        # after the last results.json write: the sender adds its "transfers" records to that file; a failed send
        # loses nothing (files stay in OUT, `python -m monai_app.send OUT` retries) and does not fail the batch
        summary = send_outputs(app.results_writer.output_folder, settings.send_to, options=settings.send)
        (log.info if summary.ok else log.warning)("%s", summary)
    if settings.review_send_to:
        # the reviewers' destination gets the review cases only: source (from IN where it is DICOM), BINARY SEG
        # and overlay, recorded in the same "transfers" list
        summary = send_outputs(app.results_writer.output_folder, settings.review_send_to, options=settings.send,
                               select=review_selection(input_path))
        (log.info if summary.ok else log.warning)("review cases: %s", summary)
    return 0


if __name__ == "__main__":
    status = main()
    # Every output, results.json and the edge store's transactions are written and closed by now.  Tearing down
    # torch, Holoscan and MONAI module by module would take another 0.5 s or so (the README's Performance
    # section), a tenth of a short batch: flush the logs and leave.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
