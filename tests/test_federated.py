# Copyright (c) the dermseg contributors. Apache-2.0.
"""Federated fine-tuning with NVIDIA FLARE (``training_bundle/scripts/federated.py``), end to end in FLARE's
simulator: two sites with five small ISIC photos each (``tests/data/isic_sample``; the second site's as colour-cast
PNGs of its own), one round of FedAvg over the bundle's trainer, then the exports the edge installs.  A tiny
network at 32 px keeps the whole module under a minute of CPU time (all processes), most of it the start-up of
FLARE's processes (each imports torch and MONAI) and of the exports.  Needs nothing outside the repository."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from _bundle_helpers import BUNDLE_ROOT, SAMPLE_DATALIST, SAMPLE_DIR, cli_args, torch_threads

sys.path.insert(0, str(BUNDLE_ROOT / "scripts"))

import federated  # noqa: E402  (training_bundle/scripts)
from federated_privacy import STEPS_KEY, WeightsOnly, payload_problems  # noqa: E402

TINY = [4, 8, 16, 32, 64]
BASE_VERSION = json.loads((BUNDLE_ROOT / "configs" / "metadata.json").read_text())["version"]
VERSION = BASE_VERSION + "+fedavg.test"


def _network():
    from networks import RIBCUNet

    return RIBCUNet(channels=TINY)


def _site_datalists(root: Path):
    """Two edge datalists (absolute paths under "training", as ``monai_app.edge datalist`` writes them): site A
    the first five sample photos as they are, site B the next five as warm-light PNGs in its own folder."""
    cases = json.loads(SAMPLE_DATALIST.read_text())["training"]
    a = [{"image": str(SAMPLE_DIR / c["image"]), "label": str(SAMPLE_DIR / c["label"])} for c in cases[:5]]
    store = root / "site_b_store"
    store.mkdir()
    b = []
    for index, case in enumerate(cases[5:10]):
        rgb = np.asarray(PIL.Image.open(SAMPLE_DIR / case["image"]).convert("RGB"), dtype=np.float32)
        PIL.Image.fromarray(np.clip(rgb * [1.15, 1.0, 0.8], 0, 255).astype(np.uint8)).save(store / f"{index}.png")
        PIL.Image.open(SAMPLE_DIR / case["label"]).save(store / f"{index}_mask.png")
        b.append({"image": str(store / f"{index}.png"), "label": str(store / f"{index}_mask.png")})
    paths = {}
    for name, items in (("A", a), ("B", b)):
        paths[name] = root / f"{name}.json"
        paths[name].write_text(json.dumps({"training": items, "edge_samples": [{"sample": "corrected"}] * len(items)}))
    return paths


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    """One simulated federation: 2 sites, 1 round of 1 local epoch, from a tiny "deployed" model, with the
    shipped model's recipe (the default)."""
    root = tmp_path_factory.mktemp("federated")
    sites = _site_datalists(root)
    torch.manual_seed(0)
    deployed = root / "deployed.pt"
    torch.save(_network().state_dict(), deployed)
    overrides = {
        "channels": TINY, "image_size": [32, 32], "batch_size": 4, "num_workers": 0, "num_threads": 1,
        "learning_rate": 0.01, "pretrained_checkpoint": str(deployed),
        # the recipe (the default) validates and keeps its EMA; at decay 0 the EMA is the trained weights, so each
        # site's kept model is what it sent
        "ema_decay": 0.0,
        # the server's int8 calibration images: ISIC's, here the sample's
        "dataset_dir": str(SAMPLE_DIR), "datalist_file": str(SAMPLE_DATALIST),
    }
    work = root / "W"
    with torch_threads(1):
        code = federated.main([
            "simulate", "--site", str(sites["A"]), "--site", str(sites["B"]), "--rounds", "1", "--local-epochs", "1",
            "--work", str(work), "--version", VERSION, "--calibration_images", "4", *cli_args(overrides),
        ])
    assert code == 0
    return {"work": work, "models": work / "models", "deployed": deployed, "summary": json.loads((work / "federated.json").read_text())}


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_the_global_model_is_exported_as_every_version_and_installs(federation):
    """model.pt, model.ts, model.onnx and model_int8.onnx with the new version's metadata: what install-model takes."""
    import onnxruntime
    from monai.bundle import verify_metadata

    from monai_app.edge.model_registry import model_exports, read_name_and_version

    models = federation["models"]
    metadata = json.loads((models / "metadata.json").read_text())
    assert metadata["version"] == VERSION and VERSION in metadata["changelog"] and BASE_VERSION in metadata["changelog"]
    assert metadata["federated"]["base_version"] == BASE_VERSION
    assert (metadata["federated"]["rounds"], metadata["federated"]["local_epochs"], metadata["federated"]["sites"]) == (1, 1, ["A", "B"])
    assert metadata["federated"]["steps"] == {"A": [2], "B": [2]}  # 5 photos at batch 4, one epoch each
    verify_metadata(meta_file=str(models / "metadata.json"), filepath=str(BUNDLE_ROOT / "docs" / "meta_schema_20240725.json"))
    # the edge's install check: every export loads and states the same version
    torchscript, onnx_files = model_exports(models)
    assert sorted(p.name for p in onnx_files) == ["model.onnx", "model_int8.onnx"]
    assert read_name_and_version(torchscript, onnx_files)[1] == VERSION

    net = _network().eval()
    net.load_state_dict(_load(models / "model.pt"))
    size = metadata["network_data_format"]["inputs"]["image"]["spatial_shape"]
    x = torch.rand(1, 3, *size)
    with torch.no_grad():
        expected = net(x)
        assert torch.allclose(torch.jit.load(str(torchscript))(x), expected, atol=1e-4)
    for name, atol in (("model.onnx", 1e-3), ("model_int8.onnx", None)):
        session = onnxruntime.InferenceSession(str(models / name), providers=["CPUExecutionProvider"])
        got = session.run(["pred"], {"image": x.numpy()})[0]
        assert got.shape == (1, 1, *size) and np.isfinite(got).all()
        if atol:
            assert np.allclose(got, expected.numpy(), atol=atol)


def test_the_global_model_is_the_average_of_both_sites_training(federation):
    """FedAvg of what the two sites trained (equal steps, equal weights), not the deployed weights."""
    work, global_state = federation["work"], _load(federation["models"] / "model.pt")
    deployed = _load(federation["deployed"])
    assert global_state.keys() == deployed.keys()
    assert any(not torch.equal(global_state[k], deployed[k]) for k in deployed if deployed[k].is_floating_point())
    # each site's bundle kept its trained weights locally (the validation's best model, after its only epoch)
    sites = [_load(work / "sites" / name / "models" / "model.pt") for name in ("A", "B")]
    floats = [k for k in deployed if deployed[k].is_floating_point()]
    assert any(not torch.equal(sites[0][k], sites[1][k]) for k in floats)
    for key in floats:  # (the EMA does not average the integer batch counters)
        mean = (sites[0][key].double() + sites[1][key].double()) / 2
        assert torch.allclose(global_state[key].double(), mean, atol=1e-5), key


def test_each_site_sent_only_the_networks_weights(federation):
    """What left each site, as its WeightsOnly filter recorded it: every weight of the network, nothing else."""
    expected = _network().state_dict()
    sent = federation["summary"]["sent"]
    assert sorted(sent) == ["A", "B"]
    for site, records in sent.items():
        assert len(records) == 1, site
        record = records[0]
        assert (record["site"], record["round"], record["data_kind"]) == (site, 0, "WEIGHTS")
        assert record["names"] == sorted(expected) and record["arrays"] == len(expected)
        assert record["values"] == sum(v.numel() for v in expected.values())
        assert record["bytes"] == sum(v.numel() * v.element_size() for v in expected.values())
        assert record["meta"] == {STEPS_KEY: 2.0}
    # the filter was in the job every site ran
    config = federation["work"] / "fl" / federated.JOB_NAME / "A" / "simulate_job" / "app_A" / "config" / "config_fed_client.json"
    filters = json.loads(config.read_text())["task_result_filters"]
    assert [f["filters"][0]["path"] for f in filters] == ["federated_privacy.WeightsOnly"]


def _weights_result(data=None, meta=None):
    from nvflare.apis.dxo import DXO, DataKind

    weights = {k: v.numpy() for k, v in _network().state_dict().items()}
    result = DXO(data_kind=DataKind.WEIGHTS, data={**weights, **(data or {})}, meta={STEPS_KEY: 2, **(meta or {})}).to_shareable()
    result.set_header("current_round", 0)
    return result, {k: list(v.shape) for k, v in weights.items()}


def test_weights_only_blocks_anything_but_the_weights():
    from nvflare.apis.dxo import DXO, DataKind
    from nvflare.apis.filter import ContentBlockedException
    from nvflare.apis.fl_context import FLContext

    result, shapes = _weights_result()
    assert payload_problems(result, shapes) == []
    assert WeightsOnly(shapes).process(result, FLContext()) is result
    image = np.zeros((3, 32, 32), np.float32)
    blocked = [
        _weights_result(data={"image": image})[0],  # an image beside the weights
        _weights_result(meta={"image_path": "/data/photo.png"})[0],  # a path in the meta
        _weights_result(meta={"val_mean_jaccard": 0.8})[0],  # even a metric
        _weights_result(data={"encoder.0.conv.weight": image})[0],  # a weight with another shape
        DXO(data_kind=DataKind.METRICS, data={"x": 1.0}).to_shareable(),
    ]
    missing, _ = _weights_result()
    missing["DXO"]["data"].pop(next(iter(shapes)))
    header, _ = _weights_result()
    header.set_header("source", "/store/cases/1.2.3/image.png")
    extra, _ = _weights_result()
    extra["mask"] = image.tolist()
    for index, shareable in enumerate(blocked + [missing, header, extra]):
        assert payload_problems(shareable, shapes), index
        with pytest.raises(ContentBlockedException):
            WeightsOnly(shapes).process(shareable, FLContext())


def test_the_job_for_a_provisioned_federation(tmp_path):
    """``job`` writes the same FLARE job for ``nvflare job submit``: each site's arguments, the settings, the filter."""
    assert federated.main([
        "job", "--site", "west=/data/west.json", "--site", "east=/data/east.json", "--rounds", "3", "--job_dir", str(tmp_path),
        "--site_bundle_root", "/opt/dermseg/training_bundle", "--channels", "[4, 8, 16, 32, 64]", "--learning_rate", "0.0001",
    ]) == 0
    job = tmp_path / federated.JOB_NAME
    meta = json.loads((job / "meta.json").read_text())
    assert set(meta["deploy_map"]) >= {"app_west", "app_east"} and meta["min_clients"] == 2
    client = json.loads((job / "app_west" / "config" / "config_fed_client.json").read_text())
    args = client["executors"][0]["executor"]["args"]["task_script_args"]
    assert "--datalist /data/west.json" in args and "--bundle_root /opt/dermseg/training_bundle" in args
    settings = json.loads((job / "app_west" / "custom" / "federated_settings.json").read_text())
    assert settings["rounds"] == 3 and settings["overrides"]["learning_rate"] == 0.0001
    assert (job / "app_west" / "custom" / "federated_privacy.py").is_file()


def test_site_and_override_arguments():
    assert federated.parse_sites(["a/A.json", "west=b.json"]) == {"A": str(Path("a/A.json").resolve()), "west": str(Path("b.json").resolve())}
    for bad in (["A.json"], ["A.json", "x/A.json"], ["bad name=A.json", "B.json"]):
        with pytest.raises(ValueError):
            federated.parse_sites(bad)
    assert federated.bundle_overrides(["--image_size", "[32, 32]", "--learning_rate=0.0001", "--loss#_target_", "DiceCELoss"]) == {
        "image_size": [32, 32], "learning_rate": 0.0001, "loss#_target_": "DiceCELoss"}
    with pytest.raises(ValueError):
        federated.bundle_overrides(["--epochs"])
