# Copyright (c) the dermseg contributors. Apache-2.0.
"""Model updates at the edge: install an exported TorchScript model, roll back, and what the status says."""

from __future__ import annotations

import json
import os

import pytest
import torch

from monai_app.edge import EdgeStore, EdgeStoreError
from monai_app.edge.__main__ import main as edge_cli
from networks import RIBCUNet


@pytest.fixture(scope="module")
def exported_models(tmp_path_factory):
    """Tiny exported models as the bundle writes them: TorchScript with an embedded metadata.json."""
    folder = tmp_path_factory.mktemp("exports")
    torch.manual_seed(0)
    scripted = torch.jit.script(RIBCUNet(channels=(4, 8, 16, 32, 64)).eval())
    paths = {}
    for version in ("0.1.0", "0.1.1"):
        paths[version] = folder / f"model-{version}.ts"
        torch.jit.save(scripted, str(paths[version]), _extra_files={"metadata.json": json.dumps({"name": "dermseg", "version": version})})
    with torch.no_grad():  # same version, different weights: must be refused
        next(scripted.parameters()).add_(1.0)
    paths["0.1.1-changed"] = folder / "model-0.1.1-changed.ts"
    torch.jit.save(scripted, str(paths["0.1.1-changed"]), _extra_files={"metadata.json": json.dumps({"name": "dermseg", "version": "0.1.1"})})
    paths["no-version"] = folder / "no-version.ts"
    torch.jit.save(scripted, str(paths["no-version"]), _extra_files={"metadata.json": json.dumps({"name": "dermseg"})})
    paths["bad-version"] = folder / "bad-version.ts"
    torch.jit.save(scripted, str(paths["bad-version"]), _extra_files={"metadata.json": json.dumps({"version": "../1"})})
    paths["garbage"] = folder / "garbage.ts"
    paths["garbage"].write_bytes(b"not a model at all")
    return paths


def _status(store_dir, capsys) -> dict:
    capsys.readouterr()  # drop what earlier commands printed
    assert edge_cli(["--store", str(store_dir), "status"]) == 0
    return json.loads(capsys.readouterr().out)


def test_install_and_roll_back(tmp_path, exported_models, capsys):
    store_dir = tmp_path / "store"
    assert edge_cli(["--store", str(store_dir), "install-model", str(exported_models["0.1.0"])]) == 0  # creates the store
    assert _status(store_dir, capsys)["model_version"] == "0.1.0"
    assert edge_cli(["--store", str(store_dir), "install-model", str(exported_models["0.1.1"])]) == 0
    assert _status(store_dir, capsys) == {"accepted": 0, "review": 0, "corrected": 0, "model_version": "0.1.1"}

    with EdgeStore(store_dir) as store:
        active = store.active_model_path()
        assert active == store_dir.absolute() / "models" / "0.1.1" / "model.ts"
        assert active.read_bytes() == exported_models["0.1.1"].read_bytes()
        extra = {"metadata.json": ""}
        model = torch.jit.load(str(active), _extra_files=extra)  # the app loads it exactly so
        assert json.loads(extra["metadata.json"])["version"] == "0.1.1"
        assert tuple(model(torch.rand(1, 3, 32, 32)).shape) == (1, 1, 32, 32)
    assert os.readlink(store_dir / "models" / "active") == "0.1.1"
    assert (store_dir / "models" / "active" / "model.ts").is_file()

    assert edge_cli(["--store", str(store_dir), "rollback"]) == 0
    assert _status(store_dir, capsys)["model_version"] == "0.1.0"
    assert os.readlink(store_dir / "models" / "active") == "0.1.0"
    assert edge_cli(["--store", str(store_dir), "rollback"]) == 2
    assert "no earlier model to roll back to (active: 0.1.0)" in capsys.readouterr().err

    # installing 0.1.1 again re-activates the copy already there
    assert edge_cli(["--store", str(store_dir), "install-model", str(exported_models["0.1.1"])]) == 0
    with EdgeStore(store_dir) as store:
        assert store.active_model_version() == "0.1.1"
        assert [(e["action"], e["version"]) for e in store.model_history()] == [
            ("install", "0.1.0"), ("activate", "0.1.0"), ("install", "0.1.1"), ("activate", "0.1.1"),
            ("rollback", "0.1.0"), ("activate", "0.1.1"),
        ]
        assert store.verify() == []
    assert sorted(p.name for p in (store_dir / "models").iterdir()) == ["0.1.0", "0.1.1", "active"]


@pytest.mark.parametrize(
    "name, message",
    [
        ("0.1.1-changed", "version 0.1.1 is already installed with different contents"),
        ("no-version", "'version' None is missing"),
        ("bad-version", "'version' '../1' is missing or not a plain version"),
        ("garbage", "not a TorchScript model"),
    ],
)
def test_refused_models_change_nothing(tmp_path, exported_models, capsys, name, message):
    store_dir = tmp_path / "store"
    with EdgeStore(store_dir) as store:
        store.install_model(exported_models["0.1.1"])
        with pytest.raises(EdgeStoreError, match=message.replace("(", r"\(").replace(")", r"\)")):
            store.install_model(exported_models[name])
        assert store.active_model_version() == "0.1.1"
        assert store.verify() == []
    assert edge_cli(["--store", str(store_dir), "install-model", str(exported_models[name])]) == 2
    assert str(exported_models[name]) in capsys.readouterr().err  # the message names the file
    assert sorted(p.name for p in (store_dir / "models").iterdir()) == ["0.1.1", "active"]


def test_no_model_installed(tmp_path):
    with EdgeStore(tmp_path / "store") as store:
        assert store.active_model_path() is None and store.active_model_version() is None
        with pytest.raises(EdgeStoreError, match="active: none"):
            store.rollback_model()
