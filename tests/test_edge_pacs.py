# Copyright (c) the dermseg contributors. Apache-2.0.
"""The review loop through a real PACS: review cases go out, reviewers' SEGs come back by DICOMweb.

Orthanc (with DICOMweb, HTTP basic authentication on, or a bearer token checked by a Lua filter) runs in the
private network namespace of tests/_orthanc.py.  One study holds four cases of the edge store: A waits and gets a
reviewer's SEG (OHIF-style: "Segment 1", Tissue, Manufacturer OHIF, from a calibrated photo), B was closed by a
PNG before the pull and gets a different SEG, C is accepted, D waits with no SEG; the app's own SEG of A and a SEG
of an image the store does not know sit beside them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import PIL.Image
import pydicom
import pytest

from monai_app.edge import EdgeStore
from monai_app.edge.__main__ import main as edge_cli
from monai_app.edge.pacs_pull import dicomweb_client_for
from monai_app.pacs import parse_target, review_selection, send_outputs
from monai_app.settings import AppSettings
from networks.preprocessing import read_mask
from operators.case import ModelInfo
from operators.dicom_outputs import REVIEW_SERIES_DESCRIPTION, build_binary_seg, build_fractional_seg, build_overlay_sc

from _app_helpers import dciodvfy_errors
from _edge_helpers import case_pixels, write_dms, write_seg
from _orthanc import Orthanc
from test_pacs_security import BEARER_FILTER, PASSWORD, TOKEN, USER, _with_user

STUDY = "2.25.4242424242424242424242"
A, B, C, D, UNKNOWN = 20, 21, 22, 23, 24
SENT_REVIEW, SENT_ACCEPTED = 30, 31  # the review-send test's cases, in studies of their own
SPACING = 0.05  # mm per pixel: a calibrated dermoscope
QUICK_ENV = {"DERMSEG_SEND_TIMEOUT": "10"}


def reviewer_mask(index: int) -> np.ndarray:
    mask = case_pixels(index)[1].copy()
    mask[:3] = 1
    return mask


@pytest.fixture(scope="module")
def pacs(namespace, tmp_path_factory):
    server = Orthanc(namespace, tmp_path_factory.mktemp("orthanc-review"), aet="REVIEWPACS", user=(USER, PASSWORD)).start()
    yield server
    server.stop()


def pull_url(server: Orthanc) -> str:
    return _with_user(server.dicomweb_url, USER, PASSWORD)


def stow(namespace, server: Orthanc, *datasets) -> None:
    """Store by STOW-RS, as a viewer does."""
    target = parse_target(pull_url(server))
    with namespace.entered():
        dicomweb_client_for(target).store_instances(list(datasets))


def build_study(work: Path, store_dir: Path) -> dict:
    """The store and the study (see the module docstring); returns the sources by case."""
    work.mkdir(parents=True, exist_ok=True)
    sources = {}
    with EdgeStore(store_dir) as store:
        for index in (A, B, C, D, UNKNOWN):
            rgb, mask = case_pixels(index)
            path = work / f"{index}.dcm"
            sources[index] = write_dms(path, rgb, index, pixel_spacing=SPACING, study=STUDY)
            if index != UNKNOWN:
                store.record_case(
                    sop_instance_uid=sources[index].SOPInstanceUID, study_instance_uid=STUDY,
                    series_instance_uid=sources[index].SeriesInstanceUID, source_path=path, image=rgb, mask=mask,
                    confidence=0.9 if index == C else 0.2, route="accepted" if index == C else "review",
                    model_version="0.1.0",
                )
    return sources


def pull(store_dir: Path, capsys, *args) -> tuple:
    status = edge_cli(["--store", str(store_dir), "pull-corrections", *args])
    captured = capsys.readouterr()
    return status, json.loads(captured.out.strip().splitlines()[-1]) if status != 2 else None, captured


def test_reviewers_segs_are_pulled_and_imported_once(namespace, pacs, tmp_path, monkeypatch, capsys):
    work, store_dir = tmp_path / "work", tmp_path / "store"
    sources = build_study(work, store_dir)
    ohif = write_seg(work / "a.seg.dcm", work / f"{A}.dcm", reviewer_mask(A), label="Segment 1", manufacturer="OHIF")
    assert dciodvfy_errors(work / "a.seg.dcm") == []
    own = write_seg(work / "own.dcm", work / f"{A}.dcm", case_pixels(A)[1], manufacturer="dermseg")
    closed = write_seg(work / "b.dcm", work / f"{B}.dcm", reviewer_mask(B), manufacturer="OHIF")
    unknown = write_seg(work / "x.dcm", work / f"{UNKNOWN}.dcm", reviewer_mask(UNKNOWN), manufacturer="OHIF")
    stow(namespace, pacs, *sources.values(), ohif, own, closed, unknown)
    (work / "png").mkdir()  # B is closed before the pull, with another mask than its SEG's
    PIL.Image.fromarray(case_pixels(B)[1] * 255).save(work / "png" / f"{sources[B].SOPInstanceUID}.png")
    assert edge_cli(["--store", str(store_dir), "import-corrections", str(work / "png")]) == 0
    capsys.readouterr()

    # a password on the command line is refused: every user can read it
    status, _, captured = pull(store_dir, capsys, pull_url(pacs))
    assert status == 2 and "no password on the command line" in captured.err and PASSWORD not in captured.err

    monkeypatch.setenv("DERMSEG_REVIEW_PULL_FROM", pull_url(pacs))
    with namespace.entered():
        status, summary, captured = pull(store_dir, capsys)
    assert status == 1 and summary == {"imported": 1, "unchanged": 0, "failed": 2}, captured
    assert "4 SEG(s) found, 1 of them ours" in captured.out
    assert f"case {sources[B].SOPInstanceUID} is not waiting for review" in captured.err
    assert f"unknown UID: the SEG references {sources[UNKNOWN].SOPInstanceUID}" in captured.err
    assert PASSWORD not in captured.out + captured.err
    with EdgeStore(store_dir) as store:
        case = store.get_case(sources[A].SOPInstanceUID)
        assert case.state == "corrected" and case.correction_file == f"{ohif.SOPInstanceUID}.dcm"
        assert pydicom.dcmread(case.files["corrected_seg"]).Manufacturer == "OHIF"
        np.testing.assert_array_equal(read_mask(case.training_label), reviewer_mask(A))
        assert store.status() == {"accepted": 1, "review": 1, "corrected": 2, "model_version": None}
        assert not list(store.root.glob(".pull-*"))  # the fetched files are gone

    # D still waits, so the study is asked again: A's SEG is unchanged, nothing new is imported
    with namespace.entered():
        status, summary, _ = pull(store_dir, capsys)
    assert summary == {"imported": 0, "unchanged": 1, "failed": 2}


def test_bearer_token_and_a_wrong_one(namespace, tmp_path_factory, tmp_path, monkeypatch, capsys):
    folder = tmp_path_factory.mktemp("orthanc-review-bearer")
    (folder / "bearer.lua").write_text(BEARER_FILTER)
    server = Orthanc(namespace, folder, aet="BEARERREVIEW", extra={"LuaScripts": [str(folder / "bearer.lua")]}).start()
    try:
        work, store_dir = tmp_path / "work", tmp_path / "store"
        sources = build_study(work, store_dir)
        seg = write_seg(work / "d.dcm", work / f"{D}.dcm", reviewer_mask(D), label="Segment 1", manufacturer="OHIF")
        with namespace.entered():
            dicomweb_client_for(parse_target(server.dicomweb_url), token=TOKEN).store_instances([sources[D], seg])
            monkeypatch.setenv("DERMSEG_DICOMWEB_TOKEN", "wrong")
            status, _, captured = pull(store_dir, capsys, server.dicomweb_url)
            assert status == 2 and "HTTPError" in captured.err
            monkeypatch.setenv("DERMSEG_DICOMWEB_TOKEN", TOKEN)
            status, summary, _ = pull(store_dir, capsys, server.dicomweb_url)
        assert status == 0 and summary == {"imported": 1, "unchanged": 0, "failed": 0}
    finally:
        server.stop()


def test_review_cases_go_to_the_review_destination_marked(namespace, pacs, tmp_path):
    """The app's review send (DERMSEG_REVIEW_SEND_TO): only review cases, their DICOM source from IN, the BINARY
    SEG (its SeriesDescription says it needs review) and the overlay; not the SR, the probability SEG, nor the
    accepted case."""
    model = ModelInfo(name="dermseg", version="0.1.0")
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    cases = []
    for index, route in ((SENT_REVIEW, "review"), (SENT_ACCEPTED, "accepted")):
        rgb, mask = case_pixels(index)
        source = write_dms(inputs / f"{index}.dcm", rgb, index, pixel_spacing=SPACING)
        folder = out / source.SOPInstanceUID
        folder.mkdir(parents=True)
        objects = {"seg": build_binary_seg(source, mask, model, needs_review=route == "review"),
                   "seg_probability": build_fractional_seg(source, mask * 0.9, model),
                   "overlay_sc": build_overlay_sc(source, rgb, model)}
        for kind, dataset in objects.items():
            dataset.save_as(folder / f"{kind}.dcm", enforce_file_format=True)
        cases.append({"source_file": f"{index}.dcm", "source_sop_instance_uid": source.SOPInstanceUID,
                      "status": "ok", "error": None, "confidence": 0.2, "route": route,
                      "outputs": {kind: f"{source.SOPInstanceUID}/{kind}.dcm" for kind in objects}})
    assert dciodvfy_errors(out / cases[0]["outputs"]["seg"]) == []
    (out / "results.json").write_text(json.dumps({"cases": cases}))

    with namespace.entered():
        summary = send_outputs(out, pull_url(pacs), select=review_selection(inputs), retries=0)
    assert summary.ok and summary.sent == 3, str(summary)
    review_study = pydicom.dcmread(inputs / f"{SENT_REVIEW}.dcm").StudyInstanceUID
    series = {item["0008103E"]["Value"][0] for item in pacs.qido(f"/studies/{review_study}/series")
              if "0008103E" in item}
    assert REVIEW_SERIES_DESCRIPTION in series and "Skin lesion probability SEG" not in series
    assert not pacs.qido("/studies", StudyInstanceUID=pydicom.dcmread(inputs / f"{SENT_ACCEPTED}.dcm").StudyInstanceUID)
    records = json.loads((out / "results.json").read_text())["transfers"]
    assert sorted(r["path"].split("/")[-1] for r in records) == [f"input:{SENT_REVIEW}.dcm", "overlay_sc.dcm", "seg.dcm"]


def test_review_settings_are_checked():
    settings = AppSettings.from_env({"DERMSEG_REVIEW_SEND_TO": "https://viewer/dicom-web",
                                     "DERMSEG_REVIEW_PULL_FROM": "https://u:p@viewer/dicom-web"})
    assert settings.review_send_to and settings.review_pull_from.username == "u" and settings.send is not None
    with pytest.raises(ValueError, match="port"):
        AppSettings.from_env({"DERMSEG_REVIEW_SEND_TO": "dicom://PACS@host:99999"})
    with pytest.raises(ValueError, match="DICOMweb"):
        AppSettings.from_env({"DERMSEG_REVIEW_PULL_FROM": "dicom://PACS@host:104"})
