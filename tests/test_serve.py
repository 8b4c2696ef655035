# Copyright (c) the dermseg contributors. Apache-2.0.
"""The edge service (python -m monai_app.serve) between two real Orthancs: a front door that a "modality" pushes
to by C-STORE (StableAge 1, REST behind a password), and a second Orthanc playing the PACS.

Everything runs in a private, loopback-only network namespace (tests/_orthanc.py): the Orthancs, the service (a
child process, killed with SIGKILL in one test) and the test's own C-STOREs and REST calls.  The model is the tiny
random RIBCUNet of conftest.py, so an app run takes seconds.  Needs root and tests/system_deps.sh, as
tests/test_pacs.py; DERMSEG_SKIP_PACS_TESTS=1 skips the Orthanc tests.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from monai_app.serve.__main__ import ModelCheck, main as serve_main
from monai_app.serve.orthanc import check_orthanc_url
from monai_app.serve import study as rounds
from monai_app.serve.progress import DONE, FAILED, QUEUED, SENDING, SKIPPED, Progress
from monai_app.settings import AppSettings, orthanc_credentials_from_env

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _app_helpers import non_photo_dicom  # noqa: E402
from _orthanc import Orthanc  # noqa: E402
# the bench and its fixtures (front_door, pacs, services, tiny_model), shared with test_serve_review.py and
# benchmarks/edge_service.py
from _serve_helpers import (  # noqa: E402,F401
    PASSWORD, Service, c_store, front_door, pacs, photo_study, services, study_instances, tiny_model,
)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
OUTPUTS_PER_PHOTO = 4  # seg.dcm, seg_probability.dcm, sr.dcm, overlay_sc.dcm


# ---------------------------------------------------------------------------------------------- DICOM studies
def ct_image(tmp_path: Path, study_uid=None, patient_id="SERVE-CT"):
    path = non_photo_dicom(tmp_path / f"ct-{generate_uid()[-8:]}.dcm", CT_IMAGE_STORAGE, "CT")
    ds = dcmread(path)
    ds.StudyInstanceUID = study_uid or ds.StudyInstanceUID
    ds.PatientID = patient_id
    return ds


def app_processes(work: Path) -> list:
    """Process ids of app runs working in ``work`` (their command line names its folders)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            command = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if proc.name.isdigit() and b"monai_app" in command and any(str(work).encode() in a for a in command) \
                and b"monai_app.serve" not in command:
            found.append(int(proc.name))
    return found


# --------------------------------------------------------------------------------------------------- the tests
def test_a_pushed_study_comes_back_as_seg_sr_and_sc_in_the_pacs(namespace, pacs, front_door, tiny_model,  # noqa: F811
                                                                 services, tmp_path):
    """3 good photos, a broken one and a CT in one study, and a CT-only study: the good photos' results arrive in
    the PACS (the broken file is an error case, as in a batch run), the CTs are left out / skipped, and our results
    sent back to the front door make a skipped round."""
    front_door.start()
    service = Service(namespace, tmp_path, front_door, tiny_model,
                      send_to=f"{pacs.dicom_target},{front_door.dicom_target}")
    services.append(service.start())
    service.wait_for("/healthz 200", lambda: service.get("/healthz")[0] == 200)
    photos = photo_study(4, seed="e2e", broken=1)
    study_uid = photos[0].StudyInstanceUID
    ct_in_study = ct_image(tmp_path, study_uid, patient_id=photos[0].PatientID)
    ct_alone = ct_image(tmp_path)

    c_store(namespace, front_door, [*photos, ct_in_study])
    pushed = time.monotonic()
    c_store(namespace, front_door, [ct_alone], calling_aet="CT-SCANNER")
    stranger = ct_image(tmp_path)
    with pytest.raises(AssertionError):  # an AE title the front door does not know may not store
        c_store(namespace, front_door, [stranger], calling_aet="STRANGER")
    assert json.loads(front_door.rest("POST", "/tools/lookup", stranger.SOPInstanceUID.encode())) == []

    service.wait_for("the results in the PACS", lambda: len(study_instances(pacs, study_uid)) >= 3 * OUTPUTS_PER_PHOTO)
    print(f"\npush to PACS, 3 good photos + 1 broken, tiny model: {time.monotonic() - pushed:.1f} s")
    arrived = study_instances(pacs, study_uid)
    assert len(arrived) == 3 * OUTPUTS_PER_PHOTO and len({uid for uid, _ in arrived}) == len(arrived)
    assert sorted({modality for _, modality in arrived}) == ["OT", "SEG", "SR"], arrived
    assert all(uid not in {ds.SOPInstanceUID for ds in photos} for uid, _ in arrived)  # results only, no photos
    # our results came back to the front door (sent there too): a second round, skipped without an app run
    rounds = service.wait_for("three finished rounds", lambda: (lambda r: r if len(r) == 3 and all(
        x["state"] in (DONE, SKIPPED) for x in r) else None)(service.rounds()))
    by_state = {(r["state"], r["round"]): r for r in rounds}
    done = by_state[(DONE, 1)]
    assert (done["photos"], done["other_instances"], done["cases_ok"], done["cases_error"]) == (4, 1, 3, 1)
    assert done["sent"] == 2 * 3 * OUTPUTS_PER_PHOTO and done["attempts"] == 1 and done["error"] is None
    assert by_state[(SKIPPED, 1)]["note"] == "nothing to segment: 1 instance(s) of other SOP classes"  # the CT study
    assert by_state[(SKIPPED, 2)]["note"] == f"nothing to segment: {3 * OUTPUTS_PER_PHOTO} of our own result(s)"
    assert by_state[(SKIPPED, 2)]["study"] == done["study"]
    (out,) = service.work.glob("studies/*/round-1/out")
    cases = json.loads((out / "results.json").read_text())["cases"]
    assert sorted(c["status"] for c in cases) == ["error", "ok", "ok", "ok"]
    assert len(list(service.work.glob("studies/*/round-*/app-*.log"))) == 1  # one app run in all
    log = service.log()
    assert "Doe^Jane" not in log and "SERVE-e2e" not in log and study_uid not in log and PASSWORD not in log
    assert service.metric("dermseg_studies_processed_total") == 1
    assert service.metric("dermseg_studies_skipped_total") == 2
    assert service.metric("dermseg_cases_processed_total") == 3
    assert service.metric("dermseg_cases_error_total") == 1
    assert service.terminate() == 0 and "stopped" in service.log()


def test_kill_9_mid_study_and_restarts_send_every_result_exactly_once(namespace, front_door, tiny_model,  # noqa: F811
                                                                      services, tmp_path):
    """Killed while the app runs (its child dies with it), restarted into a PACS outage (the results wait in
    'sending'), killed again, restarted with the PACS up: every result is in the PACS once, the app ran twice."""
    front_door.start()
    late_pacs = Orthanc(namespace, tmp_path / "late-pacs", aet="LATEPACS")  # ports chosen, nothing listening yet
    service = Service(namespace, tmp_path, front_door, tiny_model, send_to=late_pacs.dicom_target)
    services.append(service.start())
    photos = photo_study(2, seed="kill")
    c_store(namespace, front_door, photos)

    service.wait_for("the app to run", lambda: app_processes(service.work) and service.rounds())
    time.sleep(1.5)  # mid-run
    service.kill9()
    time.sleep(0.5)
    assert app_processes(service.work) == []  # the app run died with the service
    (killed,) = service.rounds()
    assert (killed["state"], killed["attempts"]) == (QUEUED, 1)

    service.start()
    waiting = service.wait_for("results waiting for the PACS", lambda: (lambda r: r if r and r[0]["state"] == SENDING
                               and r[0]["send_tries"] >= 1 else None)(service.rounds()))
    assert waiting[0]["attempts"] == 2 and "Connection refused" in waiting[0]["error"]
    service.kill9()

    late_pacs.start()
    try:
        service.start()
        (done,) = service.wait_for("the round done", lambda: (lambda r: r if r and r[0]["state"] == DONE else None)(
            service.rounds()))
        arrived = study_instances(late_pacs, photos[0].StudyInstanceUID)
    finally:
        late_pacs.stop()
    assert len(arrived) == len({uid for uid, _ in arrived}) == 2 * OUTPUTS_PER_PHOTO
    assert (done["attempts"], done["cases_ok"], done["sent"]) == (2, 2, 2 * OUTPUTS_PER_PHOTO)
    (out,) = service.work.glob("studies/*/round-1/out")
    transfers = json.loads((out / "results.json").read_text())["transfers"]
    assert len(transfers) == 2 * OUTPUTS_PER_PHOTO and {t["status"] for t in transfers} == {"sent"}
    assert sorted(p.name for p in out.parent.glob("app-*.log")) == ["app-1.log", "app-2.log"]


def test_orthanc_down_at_start_then_up_health_and_metrics(namespace, pacs, front_door, tiny_model,  # noqa: F811
                                                          services, tmp_path):
    service = Service(namespace, tmp_path, front_door, tiny_model, send_to=pacs.dicom_target)
    services.append(service.start())
    status, body = service.wait_for("/healthz", lambda: (lambda a: a if a[0] else None)(service.get("/healthz")))
    assert status == 503 and "cannot reach Orthanc" in json.loads(body)["orthanc"], body
    assert json.loads(body)["model"] == "ok"
    assert service.metric("dermseg_orthanc_up") == 0
    service.wait_for("a logged backoff", lambda: "unavailable" in service.log())

    front_door.start()
    service.wait_for("/healthz 200", lambda: service.get("/healthz")[0] == 200)
    photos = photo_study(1, seed="late")
    c_store(namespace, front_door, photos)
    service.wait_for("the results in the PACS", lambda: len(study_instances(pacs, photos[0].StudyInstanceUID))
                     == OUTPUTS_PER_PHOTO)
    service.wait_for("the round recorded done", lambda: service.metric("dermseg_studies_processed_total") == 1)
    assert service.metric("dermseg_orthanc_up") == 1
    assert service.metric("dermseg_cases_processed_total") == 1
    assert service.metric("dermseg_queue_depth") == 0
    for stage in ("download", "app", "send"):
        assert service.metric(f'dermseg_stage_seconds_count{{stage="{stage}"}}') == 1
    assert "is back after" in service.log()


def test_a_failing_study_is_tried_a_bounded_number_of_times(namespace, pacs, front_door, tmp_path,  # noqa: F811
                                                           services):
    front_door.start()
    bad_model = tmp_path / "model.ts"
    bad_model.write_bytes(b"not a model")
    service = Service(namespace, tmp_path, front_door, bad_model, send_to=pacs.dicom_target, **{"--max-attempts": "2"})
    services.append(service.start())
    status, body = service.wait_for("/healthz", lambda: (lambda a: a if a[0] else None)(service.get("/healthz")))
    assert status == 503 and "neither a TorchScript archive nor an ONNX model" in json.loads(body)["model"]
    c_store(namespace, front_door, photo_study(1, seed="fail"))

    (failed,) = service.wait_for("the round failed", lambda: (lambda r: r if r and r[0]["state"] == FAILED else None)(
        service.rounds()), timeout=120)
    assert failed["attempts"] == 2 and "the app exited with status 2" in failed["error"]
    time.sleep(1.0)
    assert service.rounds()[0]["attempts"] == 2  # no further tries
    assert service.metric("dermseg_studies_failed_total") == 1
    assert service.metric("dermseg_app_attempts_failed_total") == 2


# ------------------------------------------------------------------------------------------ without an Orthanc
def test_progress_takes_each_change_in_once_and_rounds_follow_new_instances(tmp_path):
    progress = Progress(tmp_path / "serve.sqlite")
    assert progress.take_in([("a1", False), ("a1", True), ("a1", True)], 7) == 1
    assert progress.position == 7 and [r["state"] for r in progress.rounds()] == [QUEUED]
    item = progress.next_due()
    progress.take_in([("a1", True)], 8)  # stable again while queued: a note, not a second round
    item = progress.start_attempt(item)
    assert progress.attempt_failed(item, "boom", max_attempts=2, retry_in=0) == QUEUED
    item = progress.start_attempt(progress.next_due())
    assert progress.attempt_failed(item, "boom again", max_attempts=2, retry_in=0) == FAILED
    rounds = progress.rounds()
    assert [(r["round"], r["state"], r["attempts"]) for r in rounds] == [(1, FAILED, 2), (2, QUEUED, 0)]
    second = progress.next_due()
    progress.finish(second, SKIPPED, ["i1", "i2"], note="nothing to segment")
    assert progress.taken_instances("a1") == {"i1", "i2"} and progress.next_due() is None
    progress.close()


def test_retention_deletes_only_the_folders_of_rounds_finished_long_enough_ago(tmp_path):
    progress = Progress(tmp_path / "serve.sqlite")
    progress.take_in([("done", True), ("failed", True), ("pending", True)], 3)
    done = progress.next_due()
    progress.finish(done, DONE, ["i1"], sent=4)
    failed = progress.next_due()
    progress.finish(progress.start_attempt(failed), FAILED, error="boom")
    studies = tmp_path / "studies"
    for folder in ("done/round-1/out", "pending/round-1/in", "failed/round-1", "unknown/round-1/out",
                   "done/round-x"):
        (studies / folder).mkdir(parents=True)
    (studies / "done/round-1/out/results.json").write_text("{}")

    assert rounds.prune_finished(studies, progress, keep_s=3600) == 0  # finished just now: kept
    assert rounds.prune_finished(studies, progress, keep_s=0) == 2
    left = sorted(str(p.relative_to(studies)) for p in studies.glob("*/*"))
    assert left == ["done/round-x", "pending/round-1", "unknown/round-1"]
    assert progress.finished_at("done", 1) is not None and progress.finished_at("pending", 1) is None
    assert progress.taken_instances("done") == {"i1"}  # the record stays: the study is never run again
    progress.close()


def test_orthanc_credentials_come_from_the_environment_never_the_command_line(tmp_path, capsys):
    secret = tmp_path / "password"
    secret.write_text("pa:ss word\n")
    assert orthanc_credentials_from_env({"DERMSEG_ORTHANC_USER": "svc", "DERMSEG_ORTHANC_PASSWORD_FILE": str(secret)}) \
        == ("svc", "pa:ss word")
    assert orthanc_credentials_from_env({}) is None
    for environ, message in [
        ({"DERMSEG_ORTHANC_USER": "svc"}, "DERMSEG_ORTHANC_PASSWORD_FILE"),
        ({"DERMSEG_ORTHANC_PASSWORD": "x"}, "DERMSEG_ORTHANC_USER is not"),
        ({"DERMSEG_ORTHANC_USER": "svc", "DERMSEG_ORTHANC_PASSWORD": "x",
          "DERMSEG_ORTHANC_PASSWORD_FILE": str(secret)}, "not both"),
        ({"DERMSEG_ORTHANC_USER": "svc", "DERMSEG_ORTHANC_PASSWORD_FILE": str(tmp_path / "nope")}, "cannot read"),
    ]:
        with pytest.raises(ValueError, match=message):
            orthanc_credentials_from_env(environ)
    with pytest.raises(ValueError, match="must not hold credentials"):
        check_orthanc_url("http://svc:hunter2@127.0.0.1:8042")
    assert serve_main(["--orthanc", "http://svc:hunter2@127.0.0.1:8042", "--work", str(tmp_path / "w")]) == 2
    error = capsys.readouterr().err
    assert "must not hold credentials" in error and "hunter2" not in error


def test_the_model_check_names_a_missing_model(tmp_path):
    settings = AppSettings.from_env({})
    assert "no model at" in ModelCheck(tmp_path / "missing", settings)()
    assert ModelCheck(None, settings).path().name == "models"  # the app's default: the bundle's export folder
