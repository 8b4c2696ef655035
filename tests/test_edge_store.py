# Copyright (c) the dermseg contributors. Apache-2.0.
"""The edge store: recording cases, idempotent re-runs, status, datalist, review export, the recovery sweep."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from monai_app.edge import CaseState, EdgeStore, EdgeStoreError
from monai_app.edge.__main__ import main as edge_cli

from _edge_helpers import REPO_ROOT, case_pixels, case_uids, record_test_case, write_dms


@pytest.fixture
def store_dir(tmp_path):
    return tmp_path / "store"


def _fill(store_dir: Path, work: Path, routes=("accepted", "review", "accepted", "review", "review")) -> None:
    with EdgeStore(store_dir) as store:
        for index, route in enumerate(routes):
            record_test_case(store, work, index, route=route, with_seg=route == "review")


def _all_files(root: Path):
    return sorted(p.relative_to(root).as_posix() for p in (root / "cases").rglob("*") if p.is_file())


def test_record_case_stores_everything_and_reads_back(store_dir, tmp_path):
    with EdgeStore(store_dir) as store:
        record = record_test_case(store, tmp_path / "work", 0, route="review", with_seg=True)
        assert record.added and record.state == "review" and record.model_version == "0.1.0"
        assert set(record.files) == {"image", "mask", "source", "seg"}
        assert all(path.is_file() and path.is_absolute() for path in record.files.values())
        rgb, mask = case_pixels(0)
        assert (record.rows, record.columns) == mask.shape
        from networks.preprocessing import read_mask, read_rgb

        np.testing.assert_array_equal(read_rgb(record.files["image"]), rgb)
        np.testing.assert_array_equal(read_mask(record.files["mask"]), mask)
        from PIL import Image

        assert set(np.unique(np.asarray(Image.open(record.files["mask"])))) <= {0, 255}  # ISIC's 0/255 masks
        assert pydicom.dcmread(record.files["source"]).SOPInstanceUID == case_uids(0)[2]
        assert store.verify() == []


def test_recording_again_adds_nothing_whatever_the_model_version(store_dir, tmp_path):
    work = tmp_path / "work"
    _fill(store_dir, work)
    before = _all_files(store_dir)
    with EdgeStore(store_dir) as store:
        counts = store.counts()
        for index in range(5):
            again = record_test_case(store, work, index, route="accepted", model_version="0.2.0")
            assert not again.added
            assert again.model_version == "0.1.0"  # the first result is kept
        assert store.counts() == counts == {"accepted": 2, "review": 3, "corrected": 0}
    assert _all_files(store_dir) == before


@pytest.mark.parametrize(
    "change, message",
    [
        ({"sop_instance_uid": "../../etc"}, "not a valid DICOM UID"),
        ({"sop_instance_uid": "1." + "2" * 70}, "not a valid DICOM UID"),
        ({"route": "maybe"}, "route"),
        ({"confidence": float("nan")}, "confidence"),
        ({"mask": np.zeros((3, 3), np.uint8)}, "mask shape"),
        ({"image": np.zeros((24, 32), np.uint8)}, "image must be"),
        ({"model_version": ""}, "model_version"),
        ({"sop_instance_uid": "1.2.3"}, "has SOPInstanceUID"),  # the source file is another image
    ],
)
def test_record_case_refuses_bad_arguments_and_leaves_nothing(store_dir, tmp_path, change, message):
    study, series, sop = case_uids(0)
    rgb, mask = case_pixels(0)
    source = tmp_path / "source.dcm"
    write_dms(source, rgb, 0)
    arguments = dict(
        sop_instance_uid=sop, study_instance_uid=study, series_instance_uid=series, source_path=source,
        image=rgb, mask=mask, confidence=0.5, route="review", model_version="0.1.0",
    )
    with EdgeStore(store_dir) as store:
        with pytest.raises(ValueError, match=message):
            store.record_case(**{**arguments, **change})
        assert store.counts() == {"accepted": 0, "review": 0, "corrected": 0}
    assert _all_files(store_dir) == []


def test_status_prints_one_json_line(store_dir, tmp_path):
    _fill(store_dir, tmp_path / "work")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "monai_app.edge", "--store", str(store_dir), "status"],
        capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0]) == {"accepted": 2, "review": 3, "corrected": 0, "model_version": None}


def test_commands_on_a_missing_store_fail_clearly(tmp_path, capsys):
    assert edge_cli(["--store", str(tmp_path / "nowhere"), "status"]) == 2
    assert "no edge store" in capsys.readouterr().err
    assert not (tmp_path / "nowhere").exists()


def test_datalist_lists_accepted_and_corrected_samples_that_monai_loads(store_dir, tmp_path, capsys):
    _fill(store_dir, tmp_path / "work")
    out = tmp_path / "lists" / "edge.json"
    assert edge_cli(["--store", str(store_dir), "datalist", str(out)]) == 0
    datalist = json.loads(out.read_text())
    assert len(datalist["training"]) == 2
    for entry in datalist["training"]:
        assert set(entry) == {"image", "label"}  # as ISIC's entries: the bundle batches both together
        assert Path(entry["image"]).is_absolute() and Path(entry["label"]).is_absolute()
    assert [s["sample"] for s in datalist["edge_samples"]] == ["accepted", "accepted"]

    # Read exactly as the bundle's train.json does (its loader, transforms and collation).
    import monai
    from monai.data import DataLoader, Dataset

    from networks.preprocessing import LoadMaskd, LoadRGBd, PrepareMaskd, PrepareRGBd, read_mask, read_rgb

    items = monai.data.load_decathlon_datalist(str(out), True, "training", str(out.parent))
    transforms = monai.transforms.Compose(
        [LoadRGBd("image"), LoadMaskd("label"), PrepareRGBd("image", size=(16, 16)), PrepareMaskd("label", size=(16, 16))]
    )
    batch = next(iter(DataLoader(Dataset(items, transforms), batch_size=2)))
    assert tuple(batch["image"].shape) == (2, 3, 16, 16) and tuple(batch["label"].shape) == (2, 1, 16, 16)
    for entry, sample in zip(datalist["training"], datalist["edge_samples"]):
        index = [case_uids(i)[2] for i in range(5)].index(sample["sop_instance_uid"])
        rgb, mask = case_pixels(index)
        np.testing.assert_array_equal(read_rgb(entry["image"]), rgb)
        np.testing.assert_array_equal(read_mask(entry["label"]), mask)


def test_review_export_package(store_dir, tmp_path, capsys):
    _fill(store_dir, tmp_path / "work")
    out = tmp_path / "to_institution"
    assert edge_cli(["--store", str(store_dir), "review-export", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    waiting = {case_uids(i)[2] for i in (1, 3, 4)}
    assert {case["sop_instance_uid"] for case in manifest["cases"]} == waiting
    for case in manifest["cases"]:
        folder = out / case["sop_instance_uid"]
        for name in ("source.dcm", "proposed_seg.dcm", "overlay.png", "proposed_mask.png", "image.png"):
            assert (folder / name).is_file(), name
        assert pydicom.dcmread(folder / "proposed_seg.dcm").Modality == "SEG"
        assert set(case["files"]) >= {"source", "seg", "overlay", "mask"}
    assert "<SOPInstanceUID>.png" in (out / "README.txt").read_text()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no staging left

    # a second export into the same, now full, folder is refused rather than mixed
    assert edge_cli(["--store", str(store_dir), "review-export", str(out)]) == 2
    assert "not an empty folder" in capsys.readouterr().err


def test_recovery_sweep_waits_until_no_one_else_has_the_store_open(store_dir, tmp_path):
    _fill(store_dir, tmp_path / "work", routes=("accepted",))
    orphan = store_dir / "cases" / "1.2.3" / "image.png"
    temp = store_dir / "cases" / case_uids(0)[2] / ".mask.png.1234.part"
    with EdgeStore(store_dir) as first:
        # what a writer has in place before its commit (or a killed writer left): files no row references
        orphan.parent.mkdir()
        orphan.write_bytes(b"half")
        temp.write_bytes(b"half")
        with EdgeStore(store_dir):  # the first store might be about to commit these files: no sweep now
            assert orphan.exists() and temp.exists()
    with EdgeStore(store_dir) as alone:
        assert not orphan.exists() and not orphan.parent.exists() and not temp.exists()
        assert alone.verify() == [] and alone.counts()["accepted"] == 1


def test_newer_schema_is_refused(store_dir):
    EdgeStore(store_dir).close()
    import sqlite3

    with sqlite3.connect(store_dir / "edge.sqlite") as db:
        db.execute("PRAGMA user_version=99")
    with pytest.raises(EdgeStoreError, match="newer than this software"):
        EdgeStore(store_dir)


def test_the_stored_states_are_those_of_existing_stores(store_dir, tmp_path):
    """Stores already on disk hold these strings and this schema: the enums must keep writing exactly them."""
    _fill(store_dir, tmp_path / "work", routes=("accepted", "review"))
    import sqlite3

    with sqlite3.connect(store_dir / "edge.sqlite") as db:
        cases_sql = db.execute("SELECT sql FROM sqlite_master WHERE name = 'cases'").fetchone()[0]
        stored = db.execute("SELECT route, state, typeof(state) FROM cases ORDER BY route").fetchall()
    assert "CHECK (route IN ('accepted', 'review'))" in cases_sql
    assert "CHECK (state IN ('accepted', 'review', 'corrected'))" in cases_sql
    assert stored == [("accepted", "accepted", "text"), ("review", "review", "text")]
    assert [state.value for state in CaseState] == ["accepted", "review", "corrected"]

