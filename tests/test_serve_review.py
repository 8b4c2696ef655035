# Copyright (c) the dermseg contributors. Apache-2.0.
"""The edge service closes reviews by itself: with ``DERMSEG_REVIEW_PULL_FROM`` set it pulls the reviewers' SEGs
from the PACS every ``DERMSEG_REVIEW_PULL_EVERY`` seconds, with nobody running ``pull-corrections``.

The bench of tests/test_serve.py (tests/_serve_helpers.py): a modality pushes a photo to the front-door Orthanc,
the service runs the app (tiny model) with an edge store, and a confidence threshold of 1 routes the case to
review, so the app sends its source and SEG to the review destination, a second Orthanc with DICOMweb standing for
the viewer's PACS.  There "a reviewer" stores a corrected SEG by STOW-RS, as OHIF does, and the test watches the
store: the running service must import it.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest

from monai_app.edge import EdgeStore
from monai_app.serve.__main__ import main as serve_main
from monai_app.settings import AppSettings
from networks.preprocessing import read_mask

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _edge_helpers import write_seg  # noqa: E402
from _serve_helpers import Service, c_store, front_door, pacs, photo_study, services, tiny_model  # noqa: E402,F401

PULL_EVERY = 1.0  # seconds: a few pulls fit in the test, the default (600) none


def store_status(store_dir: Path) -> dict:
    """The store's counts, or {} before the app recorded its first case (no database yet)."""
    if not (store_dir / "edge.sqlite").exists():
        return {}
    with EdgeStore(store_dir, create=False) as store:
        return store.status()


def pull_lines(service: Service) -> list:
    return [line for line in service.log().splitlines() if "corrections pulled from" in line]


def reviewer_mask(shape) -> np.ndarray:
    """A correction no model would draw (a rectangle), so the store's label can only have come from the SEG."""
    mask = np.zeros(shape, dtype=np.uint8)
    mask[shape[0] // 4 : shape[0] // 2, shape[1] // 3 : 3 * shape[1] // 4] = 1
    return mask


def test_the_running_service_imports_a_reviewers_seg_from_the_pacs(namespace, pacs, front_door,  # noqa: F811
                                                                   tiny_model, services, tmp_path):
    from dicomweb_client import DICOMwebClient

    front_door.start()
    store_dir = tmp_path / "store"
    # The results themselves stay in the work folder (no DERMSEG_SEND_TO): the review destination is the one
    # server here, and it gets what the reviewers need, the source and the SEG marked for review.
    service = Service(namespace, tmp_path, front_door, tiny_model, send_to="", env={
        "DERMSEG_EDGE_STORE": str(store_dir),
        "DERMSEG_CONFIDENCE_THRESHOLD": "1",  # accepted only at confidence 1: the tiny model's case goes to review
        "DERMSEG_PROBABILITY_SEG": "0",  # as an OHIF site runs (README): one SEG per case in the PACS
        "DERMSEG_REVIEW_SEND_TO": pacs.dicomweb_url,
        "DERMSEG_REVIEW_PULL_FROM": pacs.dicomweb_url,
        "DERMSEG_REVIEW_PULL_EVERY": f"{PULL_EVERY:g}",
    })
    services.append(service.start())
    (photo,) = photo_study(1, seed="review")
    c_store(namespace, front_door, [photo])

    service.wait_for("the case waiting for review", lambda: store_status(store_dir).get("review") == 1)
    # the review send runs at the end of the app run, after the store recorded the case
    service.wait_for("the source in the review PACS", lambda: pacs.qido(
        f"/studies/{photo.StudyInstanceUID}/instances", SOPInstanceUID=photo.SOPInstanceUID))
    # Pulls go on while nothing is corrected: the app's own SEG is found and left alone, nothing is imported.
    # Checked before the reviewer's SEG exists, so the import below comes from a later pull of the running loop.
    service.wait_for("a pull that sees only our own SEG", lambda: any(
        "'imported': 0" in line and "(1 SEG(s) of our own left alone)" in line for line in pull_lines(service)))
    assert store_status(store_dir) == {"accepted": 0, "review": 1, "corrected": 0, "model_version": None}

    # the reviewer opens the source in the viewer, corrects the lesion and saves an OHIF-style SEG back
    source_path = tmp_path / "source.dcm"
    source_path.write_bytes(pacs.download(pacs.instance_id(photo.SOPInstanceUID)))
    mask = reviewer_mask((photo.Rows, photo.Columns))
    seg = write_seg(tmp_path / "reviewer.dcm", source_path, mask, label="Segment 1", manufacturer="OHIF")
    with namespace.entered():
        DICOMwebClient(pacs.dicomweb_url).store_instances([seg])
    stored = time.monotonic()

    service.wait_for("the correction imported by the service", lambda: store_status(store_dir).get("corrected") == 1,
                     timeout=10 * PULL_EVERY + 20)
    print(f"\nreviewer's SEG stored -> imported by the service: {time.monotonic() - stored:.1f} s "
          f"(pull every {PULL_EVERY:g} s)")
    with EdgeStore(store_dir, create=False) as store:
        case = store.get_case(photo.SOPInstanceUID)
        assert case.state == "corrected" and case.correction_file == f"{seg.SOPInstanceUID}.dcm"
        np.testing.assert_array_equal(read_mask(case.training_label), mask)
        assert store.status() == {"accepted": 0, "review": 0, "corrected": 1, "model_version": None}
    assert any("'imported': 1" in line for line in pull_lines(service)), pull_lines(service)
    assert service.process.poll() is None  # imported by the running service, which goes on
    assert service.terminate() == 0


@pytest.mark.parametrize("value", ["0", "-5", "soon", "nan", "inf"])
def test_a_pull_interval_that_is_not_a_positive_number_stops_the_service_at_start(value, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DERMSEG_REVIEW_PULL_EVERY", value)
    assert serve_main(["--orthanc", "http://127.0.0.1:8042", "--work", str(tmp_path / "work")]) == 2
    assert f"DERMSEG_REVIEW_PULL_EVERY={value!r} must be a number of seconds above 0" in capsys.readouterr().err


def test_the_pull_interval_defaults_to_ten_minutes():
    assert AppSettings.from_env({}).review_pull_every == 600.0
    assert AppSettings.from_env({"DERMSEG_REVIEW_PULL_EVERY": " 2.5 "}).review_pull_every == 2.5
