# Copyright (c) the dermseg contributors. Apache-2.0.
"""The install gate: a new model version goes live only if it scores no worse on the site's corrected cases.

The reviewers' masks here are the active tiny model's own, so the active model scores 1.0 and the comparison is
sharp: the same weights under a new version pass, random weights do not.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import torch

from monai_app.edge import EdgeStore
from monai_app.edge.__main__ import main as edge_cli
from monai_app.edge.schema import CorrectedMask
from networks import RIBCUNet
from networks.export import export_onnx
from operators.case import Case
from operators.model import load_model
from operators.segmentation import segment_cases

from _app_helpers import TINY_CHANNELS, isic_rgb
from _edge_helpers import case_uids, write_dms

ACTIVE = "0.0.1-gate"
# the model's input size, as the bundle's metadata.json states it: small, so that scoring takes a moment
SMALL_INPUT = {"network_data_format": {"inputs": {"image": {"spatial_shape": [64, 64]}}}}
IMAGES = ("ISIC_0000000", "ISIC_0000001", "ISIC_0000003")


def _export(module, folder: Path, version: str) -> Path:
    """A model folder as the bundle exports it: model.ts and model.onnx (which the app, and so the gate, runs on
    a CPU)."""
    folder.mkdir()
    metadata = {"name": "dermseg", "version": version, **SMALL_INPUT}
    torch.jit.save(module, str(folder / "model.ts"), _extra_files={"metadata.json": json.dumps(metadata)})
    export_onnx(module, folder / "model.onnx", metadata=metadata, example_shape=(1, 3, 64, 64))
    return folder


@pytest.fixture(scope="module")
def candidates(tiny_model_path, tmp_path_factory):
    folder = tmp_path_factory.mktemp("candidates")
    active = _export(torch.jit.load(str(tiny_model_path)), folder / "active", ACTIVE)
    same = _export(torch.jit.load(str(tiny_model_path)), folder / "same", "0.0.2-same")
    torch.manual_seed(7)
    worse = _export(torch.jit.script(RIBCUNet(channels=TINY_CHANNELS).eval()), folder / "random", "0.0.3-random")
    return {"active": active, "same": same, "worse": worse}


@pytest.fixture
def store_dir(tmp_path, candidates):
    """A store with the tiny model active and three review cases, not yet corrected."""
    store_dir = tmp_path / "store"
    with EdgeStore(store_dir) as store:
        store.install_model(candidates["active"])
        for index, name in enumerate(IMAGES):
            rgb = isic_rgb(name, 96)
            source = tmp_path / f"{index}.dcm"
            write_dms(source, rgb, index)
            store.record_case(
                sop_instance_uid=case_uids(index)[2], study_instance_uid=case_uids(index)[0],
                series_instance_uid=case_uids(index)[1], source_path=source, image=rgb, mask=rgb[..., 0] > 128,
                confidence=0.2, route="review", model_version=ACTIVE,
            )
    return store_dir


def correct_with_the_active_models_masks(store_dir: Path) -> None:
    with EdgeStore(store_dir) as store:
        model, info = load_model(store.active_model_path(), "cpu")
        waiting = [store.get_case(case_uids(index)[2]) for index in range(len(IMAGES))]
        cases = [Case(source_file=name, rgb=isic_rgb(name, 96)) for name in IMAGES]
        segment_cases(cases, model, info, torch.device("cpu"))
        committed, _ = store.commit_corrections(
            [CorrectedMask(c.sop_instance_uid, case.mask, origin=Path("reviewer.png")) for c, case in zip(waiting, cases)]
        )
        assert len(committed) == 3


def gate(store_dir: Path, model: Path, capsys, *extra: str):
    capsys.readouterr()
    status = edge_cli(["--store", str(store_dir), "install-model", str(model), "--gate", *extra])
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    return status, json.loads(lines[0]) if lines else None, captured.err


def test_the_gate_refuses_a_worse_model_and_installs_an_equal_one(store_dir, candidates, capsys):
    status, scores, err = gate(store_dir, candidates["worse"], capsys)
    assert status == 2 and scores is None and "nothing to score on" in err

    correct_with_the_active_models_masks(store_dir)
    status, scores, err = gate(store_dir, candidates["worse"], capsys)
    assert status == 2 and not scores["installed"] and "refused" in err, scores
    assert scores["active"] == {"version": ACTIVE, "mean_jaccard": 1.0} and scores["cases"] == 3
    assert scores["new"]["version"] == "0.0.3-random" and scores["new"]["mean_jaccard"] < 1.0 - scores["margin"]

    status, scores, _ = gate(store_dir, candidates["same"], capsys, "--margin", "0")
    assert status == 0 and scores["installed"] and scores["new"]["mean_jaccard"] == 1.0
    assert edge_cli(["--store", str(store_dir), "status"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["model_version"] == "0.0.2-same" and shown["model_score"]["mean_jaccard"] == 1.0
    assert shown["model_score"]["cases"] == 3


def test_a_schema_2_store_gains_the_scores_table(store_dir, candidates, capsys):
    db = sqlite3.connect(store_dir / "edge.sqlite")  # a store written before the gate existed
    db.execute("DROP TABLE model_scores")
    db.execute("PRAGMA user_version=2")
    db.commit()
    db.close()
    with EdgeStore(store_dir) as store:
        assert "model_score" not in store.status() and store.verify() == []
    correct_with_the_active_models_masks(store_dir)
    assert gate(store_dir, candidates["same"], capsys)[0] == 0
