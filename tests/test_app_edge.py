"""The edge loop through the real app: `python -m monai_app` with DERMSEG_EDGE_STORE, then the reviewer's side."""

import json
import os
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import PIL.Image
import pytest

from networks.preprocessing import read_mask, read_rgb

from _app_helpers import PYTHON, REPO, SAMPLES, export_onnx_like_the_bundle, make_tiny_model, read_results, run_app
from _bundle_helpers import SAMPLE_DATALIST, cli_args, copy_bundle, run_cli, train_overrides

SAMPLE_INPUT = SAMPLES / "input"


def edge(store: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PYTHON, "-m", "monai_app.edge", "--store", str(store), *args],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )


def status(store: Path) -> dict:
    result = edge(store, "status")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("model") / "tiny.ts")


def test_review_cases_are_queued_corrected_and_become_samples(tmp_path, tiny_model):
    store = tmp_path / "store"
    # threshold 1: every case goes to review, the path that needs a person
    env = {"DERMSEG_EDGE_STORE": str(store), "DERMSEG_CONFIDENCE_THRESHOLD": "1.0"}
    first = run_app(SAMPLE_INPUT, tmp_path / "out1", tiny_model, env)
    assert first.returncode == 0, first.stderr[-3000:]
    ok = [c for c in read_results(tmp_path / "out1")["cases"] if c["status"] == "ok"]
    assert len(ok) >= 4 and all(c["route"] == "review" for c in ok)
    assert status(store) == {"accepted": 0, "review": len(ok), "corrected": 0, "model_version": None}

    # a re-run on the same input adds nothing twice (plain photos are wrapped with the same UIDs again)
    again = run_app(SAMPLE_INPUT, tmp_path / "out2", tiny_model, env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert status(store)["review"] == len(ok)

    package = tmp_path / "package"
    assert edge(store, "review-export", str(package)).returncode == 0
    manifest = json.loads((package / "manifest.json").read_text())
    assert len(manifest["cases"]) == len(ok)

    # "the institution" corrects each proposed mask: here, a centred ellipse of the image's size
    corrections = tmp_path / "corrections"
    corrections.mkdir()
    for case in ok:
        uid = case["source_sop_instance_uid"]
        proposed = read_mask(package / uid / "proposed_mask.png")
        h, w = proposed.shape
        yy, xx = np.mgrid[:h, :w]
        ellipse = (((yy - h / 2) / (h / 3)) ** 2 + ((xx - w / 2) / (w / 3)) ** 2) <= 1
        PIL.Image.fromarray((ellipse * 255).astype(np.uint8)).save(corrections / f"{uid}.png")
    imported = edge(store, "import-corrections", str(corrections))
    assert imported.returncode == 0, imported.stdout + imported.stderr
    assert status(store) == {"accepted": 0, "review": 0, "corrected": len(ok), "model_version": None}

    datalist_path = tmp_path / "edge.json"
    assert edge(store, "datalist", str(datalist_path)).returncode == 0
    training = json.loads(datalist_path.read_text())["training"]
    assert len(training) == len(ok)
    for entry in training:
        image, label = read_rgb(entry["image"]), read_mask(entry["label"])
        assert image.shape[:2] == label.shape
        h, w = label.shape
        assert label[h // 2, w // 2] == 1 and label[0, 0] == 0  # the reviewer's mask, not the model's

    # the cloud's side: the bundle trains one short epoch on its ISIC sample plus the edge datalist
    bundle = copy_bundle(tmp_path / "bundle")
    isic_training = len(json.loads(SAMPLE_DATALIST.read_text())["training"])
    batch_size = 4
    overrides = train_overrides(bundle, epochs=1, batch_size=batch_size, extra_datalists=[str(datalist_path)])
    trained = run_cli([PYTHON, "-m", "monai.bundle", "run", "--config_file", bundle / "configs" / "train.json",
                       *cli_args(overrides)], cwd=tmp_path)
    iterations = -(-(isic_training + len(training)) // batch_size)  # the edge samples are in the epoch
    assert f"Iter: {iterations}/{iterations}" in trained.stdout + trained.stderr
    assert (bundle / "models" / "model.pt").is_file()


def test_accepted_cases_are_samples_and_the_installed_model_is_used(tmp_path, tiny_model):
    store = tmp_path / "store"
    version = "0.0.7"
    exports = tmp_path / "next"  # a new version as the bundle's models/ folder holds it: TorchScript and ONNX
    exports.mkdir()
    model = make_tiny_model(exports / "model.ts", seed=1)
    # the tiny model's metadata says its own version; re-export it as a new edge version
    import torch

    scripted = torch.jit.load(str(model))
    torch.jit.save(scripted, str(model), _extra_files={"metadata.json": json.dumps({"name": "dermseg", "version": version})})
    export_onnx_like_the_bundle(model, exports / "model.onnx")
    assert edge(store, "install-model", str(exports)).returncode == 0

    env = dict(os.environ, DERMSEG_EDGE_STORE=str(store), DERMSEG_CONFIDENCE_THRESHOLD="0.0")
    env.pop("HOLOSCAN_MODEL_PATH", None)
    out = tmp_path / "out"
    command = ["bash", "-c", 'ulimit -s 32768 2>/dev/null; exec "$0" "$@"', PYTHON, "-m", "monai_app",
               "-i", str(SAMPLE_INPUT), "-o", str(out)]  # no -m: the edge store's active model
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"version {version}, ONNX Runtime on cpu" in result.stderr + result.stdout  # the installed ONNX export
    ok = [c for c in read_results(out)["cases"] if c["status"] == "ok"]
    assert ok and all(c["route"] == "accepted" for c in ok)
    assert status(store) == {"accepted": len(ok), "review": 0, "corrected": 0, "model_version": version}
    seg = hd.seg.segread(out / ok[0]["outputs"]["seg"])
    assert seg.get_segment_description(1).algorithm_identification[0].AlgorithmVersion == version
