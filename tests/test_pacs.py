# Copyright (c) the dermseg contributors. Apache-2.0.
"""The PACS sender (monai_app.pacs, monai_app.send) against a real Orthanc, by C-STORE and by STOW-RS.

Orthanc runs in a private, loopback-only network namespace (see tests/_orthanc.py); the clients go in with it.
The runs sent here are built in the tests (a small DMS dermoscopy image, a SEG and a TID 1500 SR of it, an overlay
Secondary Capture, a PNG) so the sender is tested on its own; the last test does the round trip with the app.

Needs root and the Debian packages of tests/system_deps.sh (run here when Orthanc is missing): without them the
Orthanc tests fail, loudly.  DERMSEG_SKIP_PACS_TESTS=1 skips them instead.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from types import SimpleNamespace

import highdicom as hd
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from monai_app import send as send_cli
from monai_app.pacs import (
    TRANSPORTS,
    DicomWebTarget,
    DimseTarget,
    Outcome,
    TargetError,
    find_dicom_outputs,
    parse_targets,
    send_outputs,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _orthanc import NetworkNamespace, Orthanc  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
DERMOSCOPIC_PHOTOGRAPHY = "1.2.840.10008.5.1.4.1.1.77.1.7"
SEGMENTATION = "1.2.840.10008.5.1.4.1.1.66.4"
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
# Fast retries, and no waiting for the 30 s default timeout where nothing answers.
QUICK = {"timeout": 5.0, "retries": 1, "retry_delay": 0.0}
QUICK_ENV = {"DERMSEG_SEND_TIMEOUT": "5", "DERMSEG_SEND_RETRIES": "1", "DERMSEG_SEND_RETRY_DELAY": "0"}


# ----------------------------------------------------------------------------------------------- DICOM test data
def dermoscopy_image(size=(48, 64), seed=0) -> Dataset:
    """A small Dermoscopic Photography image (DMS, RGB, uncompressed): a dark lesion on skin, in a new study."""
    rows, columns = size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:rows, :columns]
    lesion = ((yy - rows / 2) / (rows / 3)) ** 2 + ((xx - columns / 2) / (columns / 4)) ** 2 < 1
    rgb = np.where(lesion[..., None], [90, 55, 40], [225, 180, 160]) + rng.integers(-8, 8, (rows, columns, 3))
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = DERMOSCOPIC_PHOTOGRAPHY
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = DERMOSCOPIC_PHOTOGRAPHY
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.FrameOfReferenceUID = generate_uid()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Test^Derm", "DERM-PACS-1", "19700101", "O"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240402"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "093200"
    ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "ACC-PACS-1", ""
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "DMS", 1, 1
    ds.Manufacturer, ds.PatientOrientation, ds.ImageType = "dermseg tests", "", ["ORIGINAL", "PRIMARY"]
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.clip(rgb, 0, 255).astype(np.uint8).tobytes()
    return ds


def write_run(out_dir: Path, seed: int = 0) -> dict:
    """An app-like run in ``out_dir``: results.json with one ok case (source, SEG, SR, overlay SC, PNG) and one
    error case.  Returns the datasets by kind."""
    case_dir = out_dir / "study" / "IM0001"
    case_dir.mkdir(parents=True, exist_ok=True)
    source = dermoscopy_image(seed=seed)
    mask = np.zeros((1, source.Rows, source.Columns), dtype=bool)
    mask[0, 12:36, 16:48] = True
    seg = hd.seg.Segmentation(
        source_images=[source],
        pixel_array=mask,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[
            hd.seg.SegmentDescription(
                segment_number=1,
                segment_label="Skin lesion",
                segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
                segmented_property_type=hd.sr.CodedConcept("95324001", "SCT", "Skin lesion"),
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=hd.AlgorithmIdentificationSequence(
                    name="dermseg-test", version="0.0.1", family=codes.DCM.ArtificialIntelligence
                ),
            )
        ],
        series_instance_uid=generate_uid(),
        series_number=100,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="dermseg tests",
        manufacturer_model_name="dermseg",
        software_versions="0.0.1",
        device_serial_number="0",
    )
    seg.PatientOrientation = source.PatientOrientation
    sr = measurement_report(source, seg)
    overlay = overlay_sc(source)
    datasets = {"source": source, "seg": seg, "sr": sr, "overlay_sc": overlay}
    outputs = {}
    for kind, dataset in datasets.items():
        path = case_dir / f"{kind}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        outputs[kind] = path.relative_to(out_dir).as_posix()
    (case_dir / "overlay.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)  # not DICOM: must not be sent
    outputs["overlay_png"] = (case_dir / "overlay.png").relative_to(out_dir).as_posix()
    cases = [
        {"source_file": "study/IM0001.dcm", "source_sop_instance_uid": source.SOPInstanceUID, "status": "ok",
         "error": None, "confidence": 0.91, "route": "accepted", "lesion_area_px": int(mask.sum()),
         "outputs": outputs},
        {"source_file": "broken.jpg", "source_sop_instance_uid": None, "status": "error",
         "error": "cannot identify image file", "confidence": None, "route": None, "lesion_area_px": None,
         "outputs": {}},
    ]
    (out_dir / "results.json").write_text(json.dumps({"cases": cases, "settings": {"send_to": True}}, indent=2))
    return datasets


def measurement_report(source: Dataset, seg) -> Dataset:
    """A TID 1500 report: lesion area and a confidence, referencing segment 1 of ``seg``."""
    group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier="Skin lesion 1"),
        referenced_segment=hd.sr.ReferencedSegmentationFrame(
            sop_class_uid=seg.SOPClassUID,
            sop_instance_uid=seg.SOPInstanceUID,
            segment_number=1,
            frame_number=1,
            source_image=hd.sr.SourceImageForSegmentation(source.SOPClassUID, source.SOPInstanceUID),
        ),
        measurements=[
            hd.sr.Measurement(
                name=hd.sr.CodedConcept("42798000", "SCT", "Area"),
                value=768.0,
                unit=hd.sr.CodedConcept("{pixels}", "UCUM", "pixels"),
            ),
            hd.sr.Measurement(
                name=hd.sr.CodedConcept("111012", "DCM", "Certainty of Finding"),
                value=0.91,
                unit=hd.sr.CodedConcept("1", "UCUM", "no units"),
            ),
        ],
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(),
        procedure_reported=hd.sr.CodedConcept("118238005", "SCT", "Dermoscopy"),
        imaging_measurements=[group],
    )
    return hd.sr.Comprehensive3DSR(
        evidence=[source, seg],
        content=report,
        series_number=101,
        series_instance_uid=generate_uid(),
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="dermseg tests",
    )


def overlay_sc(source: Dataset) -> Dataset:
    """A burned-in overlay as a Secondary Capture image in the source's study."""
    pixels = np.frombuffer(source.PixelData, np.uint8).reshape(source.Rows, source.Columns, 3).copy()
    pixels[12, 16:48] = (0, 255, 0)
    return hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=pixels,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=generate_uid(),
        sop_instance_uid=generate_uid(),
        series_number=102,
        instance_number=1,
        manufacturer="dermseg tests",
        patient_orientation=("L", "F"),  # SCImage requires one; a photo has none that means much
    )


def transfers(out_dir: Path) -> list:
    return json.loads((out_dir / "results.json").read_text()).get("transfers", [])


def series_metadata(orthanc: Orthanc, study_uid: str, series_uid: str) -> list:
    """WADO-RS metadata of a series' instances, as pydicom Datasets (pixel data left out: only a URI there)."""
    answer = orthanc.rest(
        "GET",
        f"/dicom-web/studies/{study_uid}/series/{series_uid}/metadata",
        headers={"Accept": "application/dicom+json"},
    )
    return [Dataset.from_json({k: v for k, v in item.items() if k != "7FE00010"}) for item in json.loads(answer)]


def referenced_source_uids(seg: Dataset) -> set:
    """SOP Instance UIDs the SEG names in its Referenced Series Sequence."""
    return {
        instance.ReferencedSOPInstanceUID
        for series in seg.ReferencedSeriesSequence
        for instance in series.ReferencedInstanceSequence
    }


# ------------------------------------------------------------------------------------------------ the test PACS
@pytest.fixture(scope="module")
def orthanc(namespace, tmp_path_factory):
    """The module's PACS, shared by the tests (each sends its own study, with new UIDs)."""
    server = Orthanc(namespace, tmp_path_factory.mktemp("orthanc")).start()
    yield server
    server.stop()


def run_send_cli(namespace: NetworkNamespace, out_dir: Path, *arguments: str, env=None):
    """``python -m monai_app.send OUT ...`` inside the namespace, as cron or a person would run it."""
    full_env = {**os.environ, **QUICK_ENV, **(env or {})}
    command = namespace.command([PYTHON, "-m", "monai_app.send", out_dir, *arguments])
    return subprocess.run(command, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=120)


# ------------------------------------------------------------------------------------------------------ targets
def test_targets_parse_into_dimse_and_dicomweb():
    targets = parse_targets(
        "dicom://PACS@pacs.example.org:11112, http://10.0.0.5:8042/dicom-web/,"
        "https://alice:s3cr%2Ct@pacs.example.org/dicomweb/studies"
    )
    assert targets == [
        DimseTarget("PACS", "pacs.example.org", 11112),
        DicomWebTarget("http://10.0.0.5:8042/dicom-web"),
        DicomWebTarget("https://pacs.example.org/dicomweb/studies", username="alice", password="s3cr,t"),
    ]
    assert targets[1].stow_url == "http://10.0.0.5:8042/dicom-web/studies"
    assert targets[2].stow_url == "https://pacs.example.org/dicomweb/studies"
    assert targets[2].label == "https://alice@pacs.example.org/dicomweb/studies"  # never the password
    assert "s3cr" not in repr(targets[2])
    assert parse_targets(["dicom://A@h:104", "dicom://A@h:104"]) == [DimseTarget("A", "h", 104)]
    assert parse_targets("") == parse_targets(None) == []
    assert DimseTarget("A", "::1", 104).label == "dicom://A@[::1]:104"


@pytest.mark.parametrize(
    "text, message",
    [
        ("dicom://pacs.example.org:104", "AE title before '@'"),
        ("dicom://PACS@pacs.example.org", "DICOM port"),
        ("dicom://PACS@pacs.example.org:http", "port must be a number"),
        ("dicom://PACS@:104", "no host"),
        ("dicom://AN_AE_TITLE_TOO_LONG@h:104", "1 to 16"),
        ("dicom://PACS@h:104/studies", "no path"),
        ("dicom://PACS:pw@h:104", "dicom://PACS:***@h:104"),
        ("https://user:hunter2@/dicom-web", "no host"),
        ("ftp://pacs.example.org", "unknown scheme 'ftp'"),
        ("pacs.example.org:104", "unknown scheme"),
        ("http://h:99999/dicom-web", "1 to 65535"),
        ("dicom://PACS@h:0", "1 to 65535"),
    ],
)
def test_target_errors_say_what_is_wrong(text, message):
    with pytest.raises(TargetError, match=message.replace("*", r"\*")) as raised:
        parse_targets(text)
    assert "hunter2" not in str(raised.value)


def test_a_new_transport_is_one_registry_entry(tmp_path, monkeypatch):
    """Parsing, sending, retries and records go through TRANSPORTS by scheme: a registered transport needs no
    other change."""

    @dataclass(frozen=True)
    class FakeTarget:
        name: str
        scheme = "fake"

        @property
        def label(self):
            return f"fake://{self.name}"

    calls = []

    def send(target, objects, out_dir, options):
        calls.append([obj.path for obj in objects])
        busy = len(calls) == 1  # the first attempt finds the PACS busy, the retry gets through
        return {obj: Outcome("busy", retryable=True) if busy else Outcome() for obj in objects}

    fake = SimpleNamespace(EXAMPLE="fake://NAME (test)", parse=lambda url: FakeTarget(url.parts.hostname), send=send)
    monkeypatch.setitem(TRANSPORTS, "fake", fake)
    with pytest.raises(TargetError, match=r"expected dicom://AET@host:port \(C-STORE\), .* or fake://NAME \(test\)"):
        parse_targets("gopher://h")
    write_run(tmp_path)

    summary = send_outputs(tmp_path, "fake://pacs1", retries=1, retry_delay=0.0)

    assert summary.ok and summary.sent == 4 and len(calls) == 2 and calls[0] == calls[1]
    assert {(r["target"], r["status"], r["attempts"]) for r in transfers(tmp_path)} == {("fake://pacs1", "sent", 2)}


def test_dicom_outputs_are_found_by_content_in_send_order(tmp_path):
    datasets = write_run(tmp_path)
    (tmp_path / "study" / "IM0001" / "notes.dcm").write_text("not DICOM, whatever the name says")
    results = json.loads((tmp_path / "results.json").read_text())
    results["cases"][0]["outputs"]["notes"] = "study/IM0001/notes.dcm"
    results["cases"][0]["outputs"]["escape"] = "../elsewhere.dcm"
    (tmp_path / "results.json").write_text(json.dumps(results))

    objects = find_dicom_outputs(tmp_path)

    # sources, then the SEG that references them, then the SR that references both
    assert [obj.sop_class_uid for obj in objects] == [
        DERMOSCOPIC_PHOTOGRAPHY, SECONDARY_CAPTURE, SEGMENTATION, COMPREHENSIVE_3D_SR
    ]
    assert {obj.sop_instance_uid for obj in objects} == {ds.SOPInstanceUID for ds in datasets.values()}
    assert all(not obj.path.endswith((".png", "notes.dcm")) for obj in objects)


def test_stow_rs_answers_are_read_per_instance():
    from monai_app.pacs import DicomObject
    from monai_app.pacs.dicomweb import stow_outcome

    obj = DicomObject("a/seg.dcm", SEGMENTATION, "1.2.3.4", str(ExplicitVRLittleEndian))
    stored = {"00081199": {"vr": "SQ", "Value": [{"00081155": {"vr": "UI", "Value": ["1.2.3.4"]}}]}}
    refused = {"00081198": {"vr": "SQ", "Value": [
        {"00081155": {"vr": "UI", "Value": ["1.2.3.4"]}, "00081197": {"vr": "US", "Value": [0xC122]}}
    ]}}
    assert stow_outcome(200, json.dumps(stored).encode(), obj).sent
    assert stow_outcome(200, b"", obj).sent  # no body to read: the status says it all
    outcome = stow_outcome(409, json.dumps(refused).encode(), obj)
    assert not outcome.sent and not outcome.retryable and "failure reason 0xC122" in outcome.error
    assert "failure reason 0xC122" in stow_outcome(202, json.dumps(refused).encode(), obj).error
    assert stow_outcome(503, b"busy", obj).retryable
    assert "not authorised" in stow_outcome(401, b"", obj).error


def test_cli_without_a_usable_target_or_run_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("DERMSEG_SEND_TO", raising=False)
    write_run(tmp_path)
    assert send_cli.main([str(tmp_path)]) == 2
    assert "no target" in capsys.readouterr().err
    assert send_cli.main([str(tmp_path), "--to", "dicom://PACS@h"]) == 2
    assert "DICOM port" in capsys.readouterr().err
    assert send_cli.main([str(tmp_path / "missing"), "--to", "dicom://PACS@h:104"]) == 2
    assert "results.json not found" in capsys.readouterr().err
    assert "transfers" not in json.loads((tmp_path / "results.json").read_text())


# ------------------------------------------------------------------------------------------- against Orthanc
def test_c_store_sends_seg_sr_and_images_and_records_them(namespace, orthanc, tmp_path):
    datasets = write_run(tmp_path)
    cases_before = json.loads((tmp_path / "results.json").read_text())["cases"]

    with namespace.entered():
        summary = send_outputs(tmp_path, orthanc.dicom_target, **QUICK)

    assert summary.ok and (summary.objects, summary.sent, summary.already_sent) == (4, 4, 0), str(summary)
    study_uid = datasets["source"].StudyInstanceUID
    found = {ds.SOPInstanceUID: ds for ds in orthanc.c_find_instances(study_uid)}
    assert set(found) == {ds.SOPInstanceUID for ds in datasets.values()}
    assert found[datasets["seg"].SOPInstanceUID].Modality == "SEG"
    assert found[datasets["sr"].SOPInstanceUID].Modality == "SR"
    # what Orthanc holds is the SEG of our source
    stored_seg = dcmread(BytesIO(orthanc.download(orthanc.instance_id(datasets["seg"].SOPInstanceUID))))
    assert referenced_source_uids(stored_seg) == {datasets["source"].SOPInstanceUID}

    document = json.loads((tmp_path / "results.json").read_text())
    assert document["cases"] == cases_before and document["settings"] == {"send_to": True}
    records = document["transfers"]
    assert len(records) == 4
    assert {r["status"] for r in records} == {"sent"} and {r["attempts"] for r in records} == {1}
    assert {r["target"] for r in records} == {orthanc.dicom_target}
    assert {r["sop_instance_uid"] for r in records} == {ds.SOPInstanceUID for ds in datasets.values()}
    assert all(r["error"] is None and r["time"].endswith("+00:00") and r["sop_class_uid"] for r in records)

    with namespace.entered():  # a second send has nothing left to do
        again = send_outputs(tmp_path, orthanc.dicom_target, **QUICK)
    assert (again.sent, again.already_sent, again.failed) == (0, 4, [])
    assert transfers(tmp_path) == records


def test_an_output_rewritten_with_a_new_instance_is_sent_again(namespace, orthanc, tmp_path):
    """A rerun of the app into the same OUT writes new instances at the same paths: those are not 'already sent'."""
    datasets = write_run(tmp_path, seed=7)
    with namespace.entered():
        assert send_outputs(tmp_path, orthanc.dicom_target, **QUICK).sent == 4
    seg = datasets["seg"]
    seg.SOPInstanceUID = seg.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    seg.save_as(tmp_path / "study" / "IM0001" / "seg.dcm", enforce_file_format=True)

    with namespace.entered():
        summary = send_outputs(tmp_path, orthanc.dicom_target, **QUICK)

    assert (summary.sent, summary.already_sent) == (1, 3)
    (record,) = [r for r in transfers(tmp_path) if r["path"].endswith("seg.dcm")]
    assert record["sop_instance_uid"] == seg.SOPInstanceUID and record["attempts"] == 1
    assert orthanc.instance_id(seg.SOPInstanceUID)


def test_stow_rs_sends_to_dicomweb_and_qido_finds_the_seg_of_the_source(namespace, orthanc, tmp_path):
    datasets = write_run(tmp_path, seed=1)

    result = run_send_cli(namespace, tmp_path, "--to", orthanc.dicomweb_url)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 sent" in result.stdout
    study_uid = datasets["source"].StudyInstanceUID
    instances = orthanc.qido(f"/studies/{study_uid}/instances")
    assert {item["00080018"]["Value"][0] for item in instances} == {ds.SOPInstanceUID for ds in datasets.values()}
    segs = orthanc.qido(f"/studies/{study_uid}/series", Modality="SEG")
    assert len(segs) == 1
    (seg,) = series_metadata(orthanc, study_uid, segs[0]["0020000E"]["Value"][0])
    assert referenced_source_uids(seg) == {datasets["source"].SOPInstanceUID}
    assert {r["status"] for r in transfers(tmp_path)} == {"sent"}
    assert {r["target"] for r in transfers(tmp_path)} == {orthanc.dicomweb_url}


def test_pacs_down_records_failures_and_a_later_send_sends_exactly_the_unsent(namespace, orthanc, tmp_path):
    """One PACS up, one down (nothing listens on its ports yet); then it comes up and the CLI runs again."""
    datasets = write_run(tmp_path, seed=2)
    late = Orthanc(namespace, tmp_path.parent / f"{tmp_path.name}-late-orthanc", aet="LATE")
    targets = ["--to", orthanc.dicom_target, "--to", f"{late.dicom_target},{late.dicomweb_url}"]

    first = run_send_cli(namespace, tmp_path, *targets)

    assert first.returncode == 1, first.stdout + first.stderr
    records = {(r["path"], r["target"]): r for r in transfers(tmp_path)}
    assert len(records) == 12
    up = [r for r in records.values() if r["target"] == orthanc.dicom_target]
    down = [r for r in records.values() if r["target"] != orthanc.dicom_target]
    assert {r["status"] for r in up} == {"sent"} and {r["attempts"] for r in up} == {1}
    assert {r["status"] for r in down} == {"failed"}
    assert {r["attempts"] for r in down} == {2}  # DERMSEG_SEND_RETRIES=1: one retry of a transient failure
    assert all("Connection refused" in r["error"] for r in down), {r["error"] for r in down}
    assert "failed dicom://LATE@127.0.0.1" in first.stdout and "cannot connect" in first.stdout
    assert all((tmp_path / r["path"]).is_file() for r in down)  # nothing lost

    late.start()
    try:
        second = run_send_cli(namespace, tmp_path, *targets)
        assert second.returncode == 0, second.stdout + second.stderr
        assert "8 sent, 4 already sent, 0 failed" in second.stdout
        # LATE got every object exactly once over each route; the first PACS was not sent anything again
        assert sorted(late.sop_instance_uids()) == sorted(ds.SOPInstanceUID for ds in datasets.values())
        after = {(r["path"], r["target"]): r for r in transfers(tmp_path)}
        assert {r["status"] for r in after.values()} == {"sent"}
        assert [after[key] for key in records if key[1] == orthanc.dicom_target] == up
        assert {after[key]["attempts"] for key in records if key[1] != orthanc.dicom_target} == {3}
    finally:
        late.stop()


def test_wrong_called_ae_title_is_a_permanent_rejection_not_retried(namespace, orthanc, tmp_path):
    write_run(tmp_path, seed=3)
    wrong = f"dicom://NOT-ORTHANC@127.0.0.1:{orthanc.dicom_port}"

    started = time.monotonic()
    with namespace.entered():
        summary = send_outputs(tmp_path, wrong, timeout=5.0, retries=3, retry_delay=5.0)

    assert time.monotonic() - started < 5  # a permanent rejection is not worth a retry
    assert not summary.ok and len(summary.failed) == 4 and summary.sent == 0
    records = transfers(tmp_path)
    assert {r["status"] for r in records} == {"failed"} and {r["attempts"] for r in records} == {1}
    error = records[0]["error"]
    assert "association rejected (permanent)" in error and "Called AE title not recognised" in error, error
    assert "failed dicom://NOT-ORTHANC@" in str(summary)


def test_dicomweb_errors_are_recorded_with_the_http_status(namespace, orthanc, tmp_path):
    write_run(tmp_path, seed=4)
    with namespace.entered():
        summary = send_outputs(tmp_path, f"{orthanc.rest_url}/no-such-dicom-web", **QUICK)
    assert len(summary.failed) == 4
    assert all("STOW-RS failed (HTTP 404" in r["error"] for r in summary.failed), summary.failed[0]["error"]
    assert {r["attempts"] for r in summary.failed} == {1}  # a 404 will not fix itself: no retry


# --------------------------------------------------------------------------------------------- with the app
APP_IMAGE_SIZE = (96, 128)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A small random RIBCUNet as the bundle exports it (TorchScript with metadata.json), its output head scaled
    and centred on our test image so the mask covers part of it (random weights alone give an empty or full mask)."""
    import torch

    from networks import RIBCUNet

    torch.manual_seed(0)
    network = RIBCUNet(channels=(4, 8, 16, 32, 64)).eval()
    image = dermoscopy_image(size=APP_IMAGE_SIZE)
    rgb = np.frombuffer(image.PixelData, np.uint8).reshape(image.Rows, image.Columns, 3)
    batch = torch.nn.functional.interpolate(
        torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float() / 255.0, size=(256, 256), mode="bilinear"
    )
    with torch.no_grad():
        network.head.weight.mul_(40.0)
        network.head.bias.zero_()
        network.head.bias.fill_(-float(network(batch).median()))
    path = tmp_path_factory.mktemp("model") / "model.ts"
    metadata = {"name": "dermseg-test", "version": "0.0.1"}
    torch.jit.save(torch.jit.script(network), str(path), _extra_files={"metadata.json": json.dumps(metadata)})
    return path


def study_from_pacs_into_input_folder(orthanc: Orthanc, tmp_path: Path, seed: int) -> tuple:
    """A dermoscopy image stored in the PACS (REST), then fetched back into IN (REST /instances/{id}/file), as a
    gateway or a script would hand the app a study.  Returns (source dataset, IN, OUT)."""
    source = dermoscopy_image(size=APP_IMAGE_SIZE, seed=seed)
    source_file = tmp_path / "source.dcm"
    source.save_as(source_file, enforce_file_format=True)
    instance_id = orthanc.upload(source_file)
    input_dir, out_dir = tmp_path / "in", tmp_path / "out"
    input_dir.mkdir()
    (input_dir / "IM0001.dcm").write_bytes(orthanc.download(instance_id))
    return source, input_dir, out_dir


def run_app(namespace: NetworkNamespace, input_dir: Path, out_dir: Path, model: Path, send_to: str):
    """``python -m monai_app -i IN -o OUT -m MODEL`` with DERMSEG_SEND_TO, inside the namespace."""
    env = {**os.environ, **QUICK_ENV, "DERMSEG_SEND_TO": send_to, "DERMSEG_CALLING_AET": "DERMSEG-RT"}
    command = namespace.command(
        ["bash", "-c", 'ulimit -s 32768 2>/dev/null; exec "$0" "$@"', PYTHON, "-m", "monai_app",
         "-i", input_dir, "-o", out_dir, "-m", model]
    )
    run = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    results = json.loads((out_dir / "results.json").read_text())
    assert [case["status"] for case in results["cases"]] == ["ok"], results["cases"]
    assert results.get("transfers"), (
        "the app did not send: results.json has no 'transfers' "
        "(the app must call monai_app.pacs.send_outputs(OUT) at the end of a run when DERMSEG_SEND_TO is set)"
    )
    return results


def test_round_trip_study_from_orthanc_through_the_app_back_to_orthanc(namespace, orthanc, tiny_model, tmp_path):
    """A dermoscopy study in the PACS is fetched, segmented by the app (DERMSEG_SEND_TO set), and the SEG and SR
    that come back to the PACS reference the source instance."""
    source, input_dir, out_dir = study_from_pacs_into_input_folder(orthanc, tmp_path, seed=5)

    results = run_app(namespace, input_dir, out_dir, tiny_model, f"{orthanc.dicom_target},{orthanc.dicomweb_url}")

    records = results["transfers"]
    assert {r["status"] for r in records} == {"sent"}, records
    assert {r["target"] for r in records} == {orthanc.dicom_target, orthanc.dicomweb_url}
    study_uid = source.StudyInstanceUID
    modalities = {item["00080060"]["Value"][0] for item in orthanc.qido(f"/studies/{study_uid}/series")}
    assert {"DMS", "SEG", "SR"} <= modalities, modalities
    seg_series = orthanc.qido(f"/studies/{study_uid}/series", Modality="SEG")
    for series in seg_series:
        for seg in series_metadata(orthanc, study_uid, series["0020000E"]["Value"][0]):
            assert referenced_source_uids(seg) == {source.SOPInstanceUID}
    assert seg_series and orthanc.qido(f"/studies/{study_uid}/series", Modality="SR")


def test_app_run_succeeds_when_the_pacs_is_down_or_refuses_and_send_retries_later(
    namespace, orthanc, tiny_model, tmp_path
):
    """The PACS refusing (wrong AE title) or down (nothing listening yet) does not fail the run; the failures are
    recorded, and `python -m monai_app.send OUT` sends what is missing once that PACS is up."""
    source, input_dir, out_dir = study_from_pacs_into_input_folder(orthanc, tmp_path, seed=6)
    late = Orthanc(namespace, tmp_path / "late-orthanc", aet="LATE")
    refusing = f"dicom://WRONG-AET@127.0.0.1:{orthanc.dicom_port}"
    send_to = f"{refusing},{late.dicom_target}"

    results = run_app(namespace, input_dir, out_dir, tiny_model, send_to)

    records = results["transfers"]
    objects = {r["path"] for r in records}
    assert len(records) == 2 * len(objects) and {r["status"] for r in records} == {"failed"}
    assert all(("rejected" if r["target"] == refusing else "Connection refused") in r["error"] for r in records)
    assert all((out_dir / path).is_file() for path in objects)

    late.start()
    try:
        retry = run_send_cli(namespace, out_dir, env={"DERMSEG_SEND_TO": send_to})
        assert retry.returncode == 1, retry.stdout + retry.stderr  # the refusing PACS still refuses
        after = transfers(out_dir)
        assert {r["status"] for r in after if r["target"] == late.dicom_target} == {"sent"}
        assert {r["status"] for r in after if r["target"] == refusing} == {"failed"}
        assert sorted(late.sop_instance_uids()) == sorted({r["sop_instance_uid"] for r in after})
    finally:
        late.stop()
