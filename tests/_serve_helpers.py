# Copyright (c) the dermseg contributors. Apache-2.0.
"""The edge service's test bench, shared by tests/test_serve.py and tests/test_serve_review.py: the front-door
Orthanc (deploy/orthanc/orthanc.json), the PACS Orthanc, the service as a child process inside the test's network
namespace, and the modality's C-STOREs.  The fixtures here are used by importing them into a test module.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Dict, Optional

import pytest
from pydicom.uid import generate_uid

from monai_app.serve.progress import Progress

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _app_helpers import export_onnx_like_the_bundle, isic_rgb, photo_dataset  # noqa: E402
from _orthanc import LOOPBACK, Orthanc  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
USER, PASSWORD = "dermseg", "s3cret-for-tests"
DEPLOYED_ORTHANC_CONFIG = REPO / "deploy" / "orthanc" / "orthanc.json"
MODALITIES = ("DERMOSCOPE", "CT-SCANNER", "DERMSEG")  # the last: our results sent back to the front door
QUICK_SEND = {"DERMSEG_SEND_TIMEOUT": "3", "DERMSEG_SEND_RETRIES": "0", "DERMSEG_SEND_RETRY_DELAY": "0"}


# ----------------------------------------------------------------------------------------------------- Orthancs
class FrontDoor(Orthanc):
    """The edge box's Orthanc, configured by deploy/orthanc/orthanc.json (the shipped file: REST API behind a
    password and loopback-only, Dermoscopic Photography accepted, only registered modalities may store), with the
    harness's storage, ports and plugin path, StableAge 1 s, and the test's modalities registered."""

    def configuration(self):
        harness = super().configuration()
        config = json.loads(DEPLOYED_ORTHANC_CONFIG.read_text())
        for key in ("Name", "StorageDirectory", "IndexDirectory", "Plugins", "HttpPort", "DicomAet", "DicomPort"):
            config[key] = harness[key]
        config["DicomModalities"] = {
            aet.lower(): {"AET": aet, "Host": LOOPBACK, "Port": 104, "AllowStore": True} for aet in MODALITIES
        }
        config.update(StableAge=1, RegisteredUsers={USER: PASSWORD})
        return config

    def rest(self, method, path, data=None, headers=None, timeout=30):
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        return super().rest(method, path, data, {**(headers or {}), "Authorization": f"Basic {token}"}, timeout)


@pytest.fixture(scope="module")
def tiny_model(tiny_model_path) -> Path:
    """conftest's tiny model as ONNX, as the app serves on a CPU: no TorchScript warm-up in every app run."""
    return export_onnx_like_the_bundle(tiny_model_path, tiny_model_path.with_suffix(".onnx"))


@pytest.fixture(scope="module")
def pacs(namespace, tmp_path_factory):
    server = Orthanc(namespace, tmp_path_factory.mktemp("pacs"), aet="PACS").start()
    yield server
    server.stop()


@pytest.fixture
def front_door(namespace, tmp_path):
    server = FrontDoor(namespace, tmp_path / "front-door", aet="DERMSEG_AI")
    yield server  # not started: each test starts it when it wants
    server.stop()


def study_instances(orthanc: Orthanc, study_uid: str) -> list:
    """(SOP Instance UID, Modality) of every instance the Orthanc holds in the study."""
    matches = json.loads(orthanc.rest("POST", "/tools/lookup", study_uid.encode()))
    found = []
    for study in (m["ID"] for m in matches if m["Type"] == "Study"):
        for series in json.loads(orthanc.rest("GET", f"/studies/{study}/series")):
            modality = series["MainDicomTags"].get("Modality")
            for instance in json.loads(orthanc.rest("GET", f"/series/{series['ID']}/instances")):
                found.append((instance["MainDicomTags"]["SOPInstanceUID"], modality))
    return found


# ---------------------------------------------------------------------------------------------- DICOM studies
def photo_study(count: int, seed: str, broken: int = 0) -> list:
    """``count`` small dermoscopy photos (DMS) in one new study; the last ``broken`` have truncated pixel data."""
    study_uid, series_uid = generate_uid(), generate_uid()
    datasets = []
    for number in range(count):
        ds = photo_dataset(isic_rgb(f"ISIC_{number:07d}", 96), study_instance_uid=study_uid,
                           series_instance_uid=series_uid, instance_number=number + 1, seed=f"{seed}-{number}",
                           patient={"PatientID": f"SERVE-{seed}"})
        if number >= count - broken:
            ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
        datasets.append(ds)
    return datasets


def c_store(namespace, orthanc: Orthanc, datasets: list, calling_aet: str = "DERMOSCOPE") -> None:
    """What a modality does: one association, a C-STORE per instance."""
    from pynetdicom import AE

    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    for sop_class, syntax in sorted({(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID) for ds in datasets}):
        ae.add_requested_context(sop_class, syntax)  # one context each: the SCP accepts one syntax per context
    with namespace.entered():
        association = ae.associate(LOOPBACK, orthanc.dicom_port, ae_title=orthanc.aet)
        assert association.is_established, orthanc.log_tail()
        try:
            for ds in datasets:
                status = association.send_c_store(ds)
                assert status and status.Status == 0, (status, orthanc.log_tail())
        finally:
            association.release()


# ------------------------------------------------------------------------------------------------ the service
class Service:
    """``python -m monai_app.serve`` inside the namespace, with the Orthanc password in a file."""

    def __init__(self, namespace, tmp_path: Path, front: Orthanc, model: Path, send_to: str,
                 env: Optional[Dict[str, str]] = None, **options):
        """``env``: further DERMSEG_* settings for the service and the app runs it starts; ``options``: its
        command-line options (``--poll-interval`` ...)."""
        self.namespace, self.front, self.model = namespace, front, model
        self.work = tmp_path / "work"
        self.http_port = namespace.free_port()
        password_file = tmp_path / "orthanc-password"
        password_file.write_text(PASSWORD + "\n")
        password_file.chmod(0o600)
        self.env = {**os.environ, **QUICK_SEND, "DERMSEG_SEND_TO": send_to, "DERMSEG_ORTHANC_USER": USER,
                    "DERMSEG_ORTHANC_PASSWORD_FILE": str(password_file), **(env or {})}
        self.options = {"--poll-interval": "0.2", "--retry-delay": "0.2", "--backoff-max": "1", **options}
        self.log_path = tmp_path / "serve.log"
        self.process = None
        self.starts = 0

    def start(self) -> "Service":
        arguments = [a for pair in self.options.items() for a in pair]
        command = ["setpriv", "--pdeathsig", "KILL", PYTHON, "-m", "monai_app.serve", "--orthanc", self.front.rest_url,
                   "--work", self.work, "--model", self.model, "--http-port", self.http_port, *arguments]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.namespace.command(command), cwd=REPO, env=self.env, stdout=log,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.starts += 1
        return self

    def kill9(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def terminate(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def rounds(self) -> list:
        if not (self.work / "serve.sqlite").is_file():
            return []
        progress = Progress(self.work / "serve.sqlite")
        try:
            return progress.rounds()
        finally:
            progress.close()

    def get(self, path: str):
        """(status, body) of GET http://127.0.0.1:PORT/path; (None, reason) when nothing answers."""
        with self.namespace.entered():
            try:
                with urllib.request.urlopen(f"http://{LOOPBACK}:{self.http_port}{path}", timeout=5) as answer:
                    return answer.status, answer.read().decode()
            except urllib.error.HTTPError as error:
                return error.code, error.read().decode()
            except (urllib.error.URLError, OSError) as error:
                return None, str(error)

    def metric(self, name: str) -> float:
        status, body = self.get("/metrics")
        assert status == 200, body
        for line in body.splitlines():
            if line.split(" ")[0] == name:
                return float(line.split(" ")[1])
        raise AssertionError(f"{name} not in /metrics:\n{body}")

    def wait_for(self, what: str, condition, timeout: float = 90.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = condition()
            if value:
                return value
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"the service exited ({self.process.returncode}) waiting for {what}:\n"
                                     f"{self.log()[-4000:]}")
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}; rounds {self.rounds()}\n{self.log()[-4000:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.kill9()


@pytest.fixture
def services():
    started = []
    yield started
    for service in started:
        service.stop()
