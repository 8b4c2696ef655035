# Copyright (c) the dermseg contributors. Apache-2.0.
"""The training bundle end to end on real ISIC images: train, resume, evaluate, infer, export, and the model
zoo's own checks (``ci/verify_bundle.py``).  CPU only; about a minute on two cores."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from _bundle_helpers import (
    BUNDLE_ROOT,
    EVALUATE_CONFIGS,
    INFERENCE_CONFIGS,
    PYTHON,
    SAMPLE_DATALIST,
    SAMPLE_DIR,
    cli_args,
    config_files,
    config_workflow,
    copy_bundle,
    run_cli,
    sample_overrides,
    torch_threads,
    train_overrides,
)

from networks.preprocessing import clean_mask, mask_cleanup_of


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    with torch_threads(1):
        yield

def _read_log(path: Path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def trained_bundle(tmp_path_factory):
    """A bundle copy trained for two epochs through ConfigWorkflow, as ``monai.bundle run`` would."""
    bundle = copy_bundle(tmp_path_factory.mktemp("trained") / "bundle")
    workflow = config_workflow(bundle, ["train.json"], "train", **train_overrides(bundle))
    workflow.initialize()
    assert workflow.check_properties() == []
    workflow.run()
    workflow.finalize()
    return bundle


def test_training_writes_best_model_checkpoints_and_log(trained_bundle):
    models = trained_bundle / "models"
    assert (models / "model.pt").is_file()
    assert sorted(p.name for p in models.glob("checkpoint_epoch=*.pt")) == ["checkpoint_epoch=1.pt", "checkpoint_epoch=2.pt"]
    checkpoint = torch.load(models / "checkpoint_epoch=2.pt", map_location="cpu", weights_only=True)
    assert set(checkpoint) == {"model", "optimizer", "lr_scheduler", "trainer", "best_model_saver"}
    assert checkpoint["trainer"]["iteration"] == 2 * checkpoint["trainer"]["epoch_length"]  # ignite keeps iterations

    rows = _read_log(trained_bundle / "eval" / "train_log.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    for key in ("lr", "train_loss", "train_accuracy", "val_mean_jaccard", "val_mean_dice", "val_accuracy"):
        assert all(r[key] != "" for r in rows), key
    assert float(rows[1]["train_loss"]) < float(rows[0]["train_loss"]), "training loss did not go down"

    # model.pt holds the weights of the best validation epoch: a plain state_dict the network loads as is
    best = checkpoint["best_model_saver"]
    assert best["best_epoch"] in (1, 2)
    assert best["best_metric"] == pytest.approx(max(float(r["val_mean_jaccard"]) for r in rows))
    from networks import RIBCUNet

    default_width = json.loads((BUNDLE_ROOT / "configs" / "train.json").read_text())["channels"]
    RIBCUNet(channels=default_width).load_state_dict(torch.load(models / "model.pt", weights_only=True))


def test_resume_continues_at_the_next_epoch(trained_bundle, tmp_path):
    """An interrupted run (here: one that stopped after epoch 2) continues at epoch 3 from the CLI, run from
    another folder, and keeps its history, best-model state and checkpoint budget."""
    bundle = copy_bundle(tmp_path / "bundle")
    shutil.copytree(trained_bundle / "models", bundle / "models", dirs_exist_ok=True)
    shutil.copytree(trained_bundle / "eval", bundle / "eval")
    before = _read_log(bundle / "eval" / "train_log.csv")
    best_before = torch.load(bundle / "models" / "checkpoint_epoch=2.pt", weights_only=True)["best_model_saver"]

    proc = run_cli(
        [PYTHON, "-m", "monai.bundle", "run", "--config_file", bundle / "configs" / "train.json", *cli_args(train_overrides(bundle, epochs=3))],
        cwd=tmp_path,
    )
    output = proc.stdout + proc.stderr
    assert "Restored all variables from" in output and "checkpoint_epoch=2.pt" in output
    assert "Epoch[1]" not in output and "Epoch[3]" in output

    after = _read_log(bundle / "eval" / "train_log.csv")
    assert [int(r["epoch"]) for r in after] == [1, 2, 3]
    assert after[:2] == before
    assert sorted(p.name for p in (bundle / "models").glob("checkpoint_epoch=*.pt")) == ["checkpoint_epoch=2.pt", "checkpoint_epoch=3.pt"]
    checkpoint = torch.load(bundle / "models" / "checkpoint_epoch=3.pt", weights_only=True)
    assert checkpoint["trainer"]["iteration"] == 3 * checkpoint["trainer"]["epoch_length"]
    # the best score survived the restart: it only moves if epoch 3 beat it
    assert checkpoint["best_model_saver"]["best_metric"] >= best_before["best_metric"]
    assert checkpoint["best_model_saver"]["best_metric"] == pytest.approx(max(float(r["val_mean_jaccard"]) for r in after))


def _test_set_with_a_non_square_photo(root: Path) -> Path:
    """The sample's three test cases, the first one stretched to 80x48 (W x H) so that 'original size' is not
    the model's size nor square: a swapped height and width cannot go unnoticed."""
    datalist = json.loads(SAMPLE_DATALIST.read_text())
    for n, entry in enumerate(datalist["testing"]):
        for key in ("image", "label"):
            src, dst = SAMPLE_DIR / entry[key], root / entry[key]
            dst.parent.mkdir(parents=True, exist_ok=True)
            if n == 0:
                resample = PIL.Image.Resampling.BILINEAR if key == "image" else PIL.Image.Resampling.NEAREST
                PIL.Image.open(src).resize((80, 48), resample).save(dst)
            else:
                shutil.copy(src, dst)
    (root / "datalist.json").write_text(json.dumps({"testing": datalist["testing"]}))
    return root


def test_evaluate_scores_at_original_size_and_writes_report(trained_bundle, tmp_path):
    data = _test_set_with_a_non_square_photo(tmp_path / "data")
    out = tmp_path / "eval"
    shutil.copy(trained_bundle / "eval" / "train_log.csv", tmp_path / "train_log.csv")
    workflow = config_workflow(
        trained_bundle,
        EVALUATE_CONFIGS,
        "infer",
        **sample_overrides(
            trained_bundle, dataset_dir=str(data), datalist_file=str(data / "datalist.json"), output_dir=str(out), train_log=str(tmp_path / "train_log.csv")
        ),
    )
    workflow.initialize()
    assert workflow.check_properties() == []
    workflow.run()
    monai_mean_iou = workflow.parser.get_parsed_content("evaluator").state.metrics["test_mean_jaccard"]
    # layered over train.json, the evaluation instantiates only what its `run` needs: nothing of the training
    # (no training or validation dataset is loaded, no optimizer is made)
    built = {k.replace("::", "#").split("#")[0] for k in workflow.parser.ref_resolver.resolved_content}
    assert "evaluator" in built and "network_def" in built
    assert not built & {"train", "validate", "optimizer", "lr_scheduler", "checkpoint_handlers", "resume_checkpoint"}, built
    workflow.finalize()

    written = json.loads((out / "metrics.json").read_text())
    metrics = written["metrics"]
    assert metrics["num_images"] == 3
    # scored with the clean-up the bundle's metadata states, as the app serves the model
    cleanup = mask_cleanup_of(json.loads((trained_bundle / "configs" / "metadata.json").read_text()))
    assert written["mask_cleanup"] == cleanup
    for key in ("mean_jaccard", "pooled_jaccard", "mean_dice", "mean_accuracy", "mean_sensitivity", "mean_specificity", "mean_thresholded_jaccard"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["mean_jaccard"] == pytest.approx(monai_mean_iou, abs=1e-6)  # agrees with MONAI's MeanIoU

    rows = _read_log(out / "per_image.csv")
    assert len(rows) == 3
    cases = [Path(e["image"]).stem for e in json.loads((data / "datalist.json").read_text())["testing"]]
    for case in cases:
        truth = np.asarray(PIL.Image.open(data / f"ISIC2018_Task1_Training_GroundTruth/{case}_segmentation.png"))
        pred = np.asarray(PIL.Image.open(out / "predictions" / f"{case}_segmentation.png"))
        assert pred.shape == truth.shape  # the original size, (48, 80) for the stretched one
        assert set(np.unique(pred)) <= {0, 255}
        np.testing.assert_array_equal(clean_mask(pred, cleanup), pred > 0)  # a cleaned mask is its own clean-up
        row = next(r for r in rows if r["image"] == case)
        inter, union = np.logical_and(pred > 0, truth > 0).sum(), np.logical_or(pred > 0, truth > 0).sum()
        assert float(row["jaccard"]) == pytest.approx(inter / union if union else 1.0)
    assert np.asarray(PIL.Image.open(out / "predictions" / f"{cases[0]}_segmentation.png")).shape == (48, 80)
    for name in ("report.md", "training_curves.png", "examples.png"):
        assert (out / name).is_file(), name


def test_inference_writes_masks_and_probabilities_at_original_size(trained_bundle, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    source = sorted((SAMPLE_DIR / "ISIC2018_Task1-2_Training_Input").glob("*.jpg"))[:2]
    shutil.copy(source[0], photos / "a.jpg")
    PIL.Image.open(source[1]).resize((72, 40)).save(photos / "b.png")
    out = tmp_path / "out"
    run_cli(
        [
            PYTHON, "-m", "monai.bundle", "run", "--config_file", config_files(trained_bundle, INFERENCE_CONFIGS),
            *cli_args(sample_overrides(trained_bundle, dataset_dir=str(photos), output_dir=str(out), test_time_flips=True)),
        ],
        cwd=tmp_path,
    )
    for stem, size in (("a", (64, 64)), ("b", (40, 72))):
        mask = np.asarray(PIL.Image.open(out / f"{stem}_segmentation.png"))
        prob = np.asarray(PIL.Image.open(out / f"{stem}_probability.png"))
        assert mask.shape == prob.shape == size and mask.dtype == prob.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 255}
        # the mask is the probability thresholded at 0.5 (up to the 8-bit rounding of the probability PNG)
        assert np.mean((mask > 0) == (prob >= 128)) > 0.99


def test_all_configs_have_their_properties(tmp_path, monkeypatch):
    bundle = copy_bundle(tmp_path / "bundle")
    # a one-process "distributed" run, so that multi_gpu_train.json can initialise its process group here
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}.items():
        monkeypatch.setenv(key, value)
    recipe_evaluate = ["train.json", "train_recipe.json", "evaluate.json"]
    for configs, kind in (
        (["train.json"], "train"), (["train.json", "multi_gpu_train.json"], "train"), (EVALUATE_CONFIGS, "infer"),
        (recipe_evaluate, "infer"), (INFERENCE_CONFIGS, "infer"),
    ):
        photos = configs[-1] == "inference.json"
        overrides = sample_overrides(bundle, dataset_dir=str(SAMPLE_DIR / "ISIC2018_Task1-2_Training_Input")) if photos else sample_overrides(bundle)
        workflow = config_workflow(bundle, configs, kind, **overrides)
        workflow.initialize()
        try:
            assert workflow.check_properties() == [], configs
        finally:
            workflow.finalize()
            # multi_gpu_train.json's finalize destroys the process group; ignite must forget it too, or the next
            # in-process evaluation in this test session all-gathers over a group that no longer exists
            import ignite.distributed as idist

            idist.sync()


def test_model_zoo_checks_and_export_round_trip(trained_bundle, tmp_path):
    """What the model zoo's ci/verify_bundle.py checks, plus the TorchScript and ONNX exports' outputs."""
    from monai.bundle import ConfigParser, verify_metadata, verify_net_in_out

    bundle = trained_bundle
    meta_file = bundle / "configs" / "metadata.json"
    inference = [str(bundle / "configs" / c) for c in INFERENCE_CONFIGS]
    metadata = json.loads(meta_file.read_text())
    assert "Apache License" in (bundle / "LICENSE").read_text()
    assert metadata["version"] in metadata["changelog"]
    verify_metadata(meta_file=str(meta_file), filepath=str(bundle / "docs" / "meta_schema_20240725.json"))
    verify_net_in_out(net_id="network_def", meta_file=str(meta_file), config_file=inference, bundle_root=str(bundle))

    # ckpt_export from the CLI, from an unrelated folder, with the layered configs
    run_cli(
        [
            PYTHON, "-m", "monai.bundle", "ckpt_export", "network_def", "--filepath", bundle / "models" / "model.ts",
            "--ckpt_file", bundle / "models" / "model.pt", "--meta_file", meta_file,
            "--config_file", config_files(bundle, INFERENCE_CONFIGS), "--bundle_root", bundle,
        ],
        cwd=tmp_path,
    )
    # ckpt_export embeds each config file under its own name: train.json (with network_def) and inference.json
    extra = {"metadata.json": "", "train.json": "", "inference.json": ""}
    scripted = torch.jit.load(str(bundle / "models" / "model.ts"), _extra_files=extra)
    embedded = json.loads(extra["metadata.json"])
    assert embedded["version"] == metadata["version"] and embedded["name"] == metadata["name"]
    for name in INFERENCE_CONFIGS:
        assert json.loads(extra[name]) == json.loads((bundle / "configs" / name).read_text()), name
    assert json.loads(extra["train.json"])["network_def"]["_target_"] == "networks.RIBCUNet"

    # the embedded configs, layered in the same order, rebuild the exported network: it takes the weights of
    # model.ts and computes what it computes
    for name in INFERENCE_CONFIGS:
        (tmp_path / name).write_bytes(extra[name])
    parser = ConfigParser()
    parser.read_config([str(tmp_path / name) for name in INFERENCE_CONFIGS])
    parser["bundle_root"] = str(bundle)
    rebuilt = parser.get_parsed_content("network_def")
    rebuilt.load_state_dict(scripted.state_dict())
    rebuilt.eval()

    parser = ConfigParser()
    parser.read_config(inference)
    parser["bundle_root"] = str(bundle)
    eager = parser.get_parsed_content("network_def")
    eager.load_state_dict(torch.load(bundle / "models" / "model.pt", weights_only=True))
    eager.eval()
    x = torch.rand(2, 3, *metadata["network_data_format"]["inputs"]["image"]["spatial_shape"])
    with torch.no_grad():
        expected = eager(x)
        assert torch.allclose(scripted(x), expected, atol=1e-5)
        assert torch.equal(rebuilt(x), expected)

    import onnxruntime

    run_cli([PYTHON, bundle / "scripts" / "export_onnx.py", "--bundle_root", bundle], cwd=tmp_path)
    session = onnxruntime.InferenceSession(str(bundle / "models" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert np.allclose(session.run(["pred"], {"image": x.numpy()})[0], expected.numpy(), atol=1e-3)
    assert session.get_modelmeta().custom_metadata_map["version"] == metadata["version"]

    # a new version's metadata, as the edge loop exports its fine-tuned model
    next_meta = tmp_path / "metadata_next.json"
    next_meta.write_text(json.dumps({**metadata, "version": metadata["version"] + "+edge1"}))
    run_cli([PYTHON, bundle / "scripts" / "export_onnx.py", "--bundle_root", bundle, "--filepath", tmp_path / "next.onnx",
             "--meta_file", next_meta], cwd=tmp_path)
    custom = onnxruntime.InferenceSession(str(tmp_path / "next.onnx"), providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
    assert custom["version"] == metadata["version"] + "+edge1" == json.loads(custom["metadata.json"])["version"]


def test_shipped_metadata_tells_the_truth():
    metadata = json.loads((BUNDLE_ROOT / "configs" / "metadata.json").read_text())
    assert metadata["schema"].endswith("/meta_schema_20240725.json")
    packages = metadata["required_packages_version"]
    assert packages["dermseg"] == "0.1.0"
    import ignite
    import monai

    assert packages["monai"] == monai.__version__ and packages["pytorch-ignite"] == ignite.__version__
    assert packages["torch"] == torch.__version__.split("+")[0]
    image = metadata["network_data_format"]["inputs"]["image"]
    assert (image["num_channels"], image["dtype"], image["value_range"]) == (3, "float32", [0, 1])
    assert image["channel_def"] == {"0": "R", "1": "G", "2": "B"}
    pred = metadata["network_data_format"]["outputs"]["pred"]
    assert (pred["num_channels"], pred["format"], pred["channel_def"]) == (1, "logits", {"0": "lesion"})
    assert pred["mask_cleanup"] == mask_cleanup_of(metadata)  # stated, and one the app and the evaluation know
    # the size the shipped model is fed (the app reads it from the metadata) is the size its recipe trains and the
    # bundle's evaluation scores at
    from monai.bundle import ConfigParser

    layered = ConfigParser()
    layered.read_config([str(BUNDLE_ROOT / "configs" / name) for name in ("train.json", "train_recipe.json")])
    assert pred["spatial_shape"] == image["spatial_shape"] == layered["image_size"]


# what train.json alone defines: evaluate.json and inference.json, layered over it, must not define them again
MODEL_KEYS = (
    "network_def", "image_size", "channels", "residual_inception", "bi_convgru", "dropout", "colour_constancy", "mask_cleanup",
    "device",
)


def _layered(configs, **overrides):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(BUNDLE_ROOT / "configs" / c) for c in configs])
    parser.update({"bundle_root": str(BUNDLE_ROOT), **overrides})
    return parser


def test_network_and_model_settings_are_defined_once_in_train_json():
    train = json.loads((BUNDLE_ROOT / "configs" / "train.json").read_text())
    for configs in (EVALUATE_CONFIGS, INFERENCE_CONFIGS):
        layer = json.loads((BUNDLE_ROOT / "configs" / configs[-1]).read_text())
        assert not set(MODEL_KEYS) & set(layer), configs[-1]
        assert not {k for k in layer if k in train and layer[k] == train[k]}, f"{configs[-1]} repeats train.json"
        parser = _layered(configs)
        for key in MODEL_KEYS:
            assert parser.get(key) == train[key], key
        # the evaluation's own settings win over training's where both name one
        assert parser["batch_size"] == 1 and parser["run"] == ["$@evaluator.run()"]
        assert "memory_format" not in parser["network"]  # evaluated as served: float32, the default layout
    assert "datalist_file" not in json.loads((BUNDLE_ROOT / "configs" / "evaluate.json").read_text())

    # a model trained with the modern recipe is evaluated with its layer too, and so gets its network settings
    from networks.preprocessing import colour_constancy_layer

    recipe = json.loads((BUNDLE_ROOT / "configs" / "train_recipe.json").read_text())
    for configs in (["train.json", "train_recipe.json", "evaluate.json"], ["train.json", "train_recipe.json", "inference.json"]):
        parser = _layered(configs, channels=[4, 8, 16, 32, 64])
        assert parser.get_parsed_content("colour_constancy") == recipe["colour_constancy"] != train["colour_constancy"]
        network = parser.get_parsed_content("network_def")
        assert type(network.colour_constancy) is type(colour_constancy_layer(recipe["colour_constancy"])), configs


def _evaluate(bundle: Path, out: Path, **overrides) -> dict:
    workflow = config_workflow(bundle, EVALUATE_CONFIGS, "infer", **sample_overrides(bundle, output_dir=str(out), report=False, **overrides))
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    return json.loads((out / "metrics.json").read_text())


def test_int8_export_and_scoring_exports_as_the_app_serves_them(trained_bundle, tmp_path):
    """quantize_onnx.py makes the int8 model from the ONNX export; the evaluation (train.json + evaluate.json)
    scores either export through ONNX Runtime, and the float export scores what model.pt scores."""
    import onnxruntime

    bundle = copy_bundle(tmp_path / "bundle")
    shutil.copy(trained_bundle / "models" / "model.pt", bundle / "models" / "model.pt")
    run_cli([PYTHON, bundle / "scripts" / "export_onnx.py", "--bundle_root", bundle], cwd=tmp_path)
    proc = run_cli([PYTHON, bundle / "scripts" / "quantize_onnx.py", "--bundle_root", bundle, "--dataset_dir", SAMPLE_DIR,
                    "--datalist_file", SAMPLE_DATALIST, "--calibration_images", 4], cwd=tmp_path)
    assert "calibrated on 4 training images" in proc.stdout
    int8 = bundle / "models" / "model_int8.onnx"
    embedded = json.loads(onnxruntime.InferenceSession(str(int8), providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map["metadata.json"])
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert embedded["precision"] == "int8" and embedded["version"] == metadata["version"]
    assert embedded["network_data_format"] == metadata["network_data_format"]

    size = metadata["network_data_format"]["inputs"]["image"]["spatial_shape"]
    weights = _evaluate(bundle, tmp_path / "pt", image_size=size)
    exported = _evaluate(bundle, tmp_path / "onnx", image_size=size, onnx_file=str(bundle / "models" / "model.onnx"))
    quantized = _evaluate(bundle, tmp_path / "int8", image_size=size, onnx_file=str(int8))
    assert exported["checkpoint"].endswith("model.onnx") and quantized["checkpoint"].endswith("model_int8.onnx")
    assert exported["metrics"]["mean_jaccard"] == pytest.approx(weights["metrics"]["mean_jaccard"], abs=1e-3)
    assert quantized["metrics"]["num_images"] == weights["metrics"]["num_images"] == 3
