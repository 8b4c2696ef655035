# Copyright (c) the dermseg contributors. Apache-2.0.
"""Model updates at the edge: install an exported model (TorchScript, or with its ONNX export), roll back, and
what the status says."""

from __future__ import annotations

import json
import os
import sqlite3

import pytest
import torch

from monai_app.edge import EdgeStore, EdgeStoreError
from monai_app.edge.__main__ import main as edge_cli
from networks import RIBCUNet
from networks.export import export_onnx
from operators.model import load_model, resolve_model_file

from _app_helpers import quantize_like_the_bundle


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
    # model folders as the bundle's models/ holds them: model.ts and model.onnx (and weights, not installed)
    for name, ts_version, onnx_version in (("0.2.0-folder", "0.2.0", "0.2.0"), ("0.2.0-folder-other-onnx", "0.2.0", "0.2.0"),
                                           ("mismatch-folder", "0.3.0", "0.2.9")):
        paths[name] = folder / name
        paths[name].mkdir()
        torch.jit.save(scripted, str(paths[name] / "model.ts"), _extra_files={"metadata.json": json.dumps({"name": "dermseg", "version": ts_version})})
        export_onnx(scripted, paths[name] / "model.onnx", metadata={"name": "dermseg", "version": onnx_version}, example_shape=(1, 3, 32, 32))
        (paths[name] / "model.pt").write_bytes(b"weights stay in the bundle")
    with torch.no_grad():
        next(scripted.parameters()).add_(1.0)
    export_onnx(scripted, paths["0.2.0-folder-other-onnx"] / "model.onnx", metadata={"name": "dermseg", "version": "0.2.0"},
                example_shape=(1, 3, 32, 32))
    # and the int8 export beside them (quantized by the bundle's script), of the same version or not; the ONNX
    # models traced from the eager network, as the bundle's export_onnx.py exports them
    shape = {"network_data_format": {"inputs": {"image": {"spatial_shape": [32, 32]}}}}
    eager = RIBCUNet(channels=(4, 8, 16, 32, 64)).eval()
    for name, int8_version in (("0.4.0-int8-folder", "0.4.0"), ("int8-mismatch-folder", "0.3.9")):
        paths[name] = folder / name
        paths[name].mkdir()
        torch.jit.save(scripted, str(paths[name] / "model.ts"), _extra_files={"metadata.json": json.dumps({"name": "dermseg", "version": "0.4.0"})})
        export_onnx(eager, paths[name] / "model.onnx", metadata={"name": "dermseg", "version": "0.4.0", **shape}, example_shape=(1, 3, 32, 32))
        export_onnx(eager, folder / "float.onnx", metadata={"name": "dermseg", "version": int8_version, **shape}, example_shape=(1, 3, 32, 32))
        quantize_like_the_bundle(folder / "float.onnx", paths[name] / "model_int8.onnx")
    paths["no-ts-folder"] = folder / "no-ts-folder"
    paths["no-ts-folder"].mkdir()
    (paths["no-ts-folder"] / "model.onnx").write_bytes((paths["0.2.0-folder"] / "model.onnx").read_bytes())
    paths["garbage-onnx-folder"] = folder / "garbage-onnx-folder"
    paths["garbage-onnx-folder"].mkdir()
    (paths["garbage-onnx-folder"] / "model.ts").write_bytes((paths["0.2.0-folder"] / "model.ts").read_bytes())
    (paths["garbage-onnx-folder"] / "model.onnx").write_bytes(b"not an onnx model")
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
        assert active == store_dir.absolute() / "models" / "0.1.1"
        assert sorted(p.name for p in active.iterdir()) == ["model.ts"]
        assert (active / "model.ts").read_bytes() == exported_models["0.1.1"].read_bytes()
        assert resolve_model_file(active) == active / "model.ts"  # the app picks the file so
        extra = {"metadata.json": ""}
        model = torch.jit.load(str(active / "model.ts"), _extra_files=extra)
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
        ("mismatch-folder", "model.onnx: version '0.2.9' differs from"),
        ("int8-mismatch-folder", "model_int8.onnx: version '0.3.9' differs from"),
        ("no-ts-folder", "a model folder must hold model.ts"),
        ("garbage-onnx-folder", "model.onnx: not a loadable ONNX model"),
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


def test_install_a_folder_with_its_onnx_export(tmp_path, exported_models, capsys):
    """The bundle's models/ folder installs both exports; the app then serves ONNX on a CPU; both are kept safe."""
    store_dir = tmp_path / "store"
    assert edge_cli(["--store", str(store_dir), "install-model", str(exported_models["0.1.0"])]) == 0
    assert edge_cli(["--store", str(store_dir), "install-model", str(exported_models["0.2.0-folder"])]) == 0
    with EdgeStore(store_dir) as store:
        active = store.active_model_path()
        assert active == store_dir.absolute() / "models" / "0.2.0"
        assert sorted(p.name for p in active.iterdir()) == ["model.onnx", "model.ts"]  # not the weights
        assert resolve_model_file(active, "cpu") == active / "model.onnx"
        model, info = load_model(active, "cpu")
        assert info.version == "0.2.0" and tuple(model(torch.rand(2, 3, 32, 32)).shape) == (2, 1, 32, 32)
        assert store.verify() == []
        # the same version again: re-activated; with another ONNX file: refused
        assert store.install_model(exported_models["0.2.0-folder"]) == "0.2.0"
        with pytest.raises(EdgeStoreError, match="version 0.2.0 is already installed with different contents"):
            store.install_model(exported_models["0.2.0-folder-other-onnx"])
    # reopening runs the recovery sweep: the ONNX file is referenced, so it stays
    with EdgeStore(store_dir) as store:
        assert (store.active_model_path() / "model.onnx").is_file() and store.verify() == []
        (store.active_model_path() / "model.onnx").write_bytes(b"tampered")
        assert store.verify() == [f"{store.active_model_path() / 'model.onnx'}: contents changed since it was stored"]
        assert store.rollback_model() == "0.1.0"
        assert resolve_model_file(store.active_model_path(), "cpu").name == "model.ts"


def test_install_a_folder_with_its_int8_export(tmp_path, exported_models):
    """All three exports are installed and verified; a CPU then gets the int8 model unless fp32 is asked for."""
    with EdgeStore(tmp_path / "store") as store:
        assert store.install_model(exported_models["0.4.0-int8-folder"]) == "0.4.0"
        active = store.active_model_path()
        assert sorted(p.name for p in active.iterdir()) == ["model.onnx", "model.ts", "model_int8.onnx"]
        model, info = load_model(active, "cpu")
        assert info.version == "0.4.0" and info.precision == "int8"
        assert tuple(model(torch.rand(1, 3, 32, 32)).shape) == (1, 1, 32, 32)
        assert load_model(active, "cpu", precision="fp32")[1].precision == "fp32"
        assert store.verify() == []
        (active / "model_int8.onnx").write_bytes(b"tampered")
        assert store.verify() == [f"{active / 'model_int8.onnx'}: contents changed since it was stored"]


def test_a_schema_1_store_gains_the_exports_table(tmp_path, exported_models):
    store_dir = tmp_path / "store"
    with EdgeStore(store_dir) as store:
        store.install_model(exported_models["0.1.0"])
    db = sqlite3.connect(store_dir / "edge.sqlite")  # make it a store written by the previous schema
    db.execute("DROP TABLE model_exports")
    db.execute("PRAGMA user_version=1")
    db.commit()
    db.close()
    with EdgeStore(store_dir) as store:
        assert store.active_model_version() == "0.1.0" and store.verify() == []
        assert store.install_model(exported_models["0.2.0-folder"]) == "0.2.0"
        assert store.verify() == []


def test_no_model_installed(tmp_path):
    with EdgeStore(tmp_path / "store") as store:
        assert store.active_model_path() is None and store.active_model_version() is None
        with pytest.raises(EdgeStoreError, match="active: none"):
            store.rollback_model()
