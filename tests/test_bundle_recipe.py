# Copyright (c) the dermseg contributors. Apache-2.0.
"""The shipped model's recipe (``train_recipe.json`` over ``train.json``) and its parts: bf16 autocast with
channels_last on the CPU, warm-up + cosine per iteration, the EMA that is validated and kept, progressive
resizing as one resumable schedule, the colour augmentation, and the threshold picked on validation and folded
into the weights."""

from __future__ import annotations

import csv
import json
import math
import sys

import numpy as np
import pytest
import torch
from scipy import ndimage

from _bundle_helpers import BUNDLE_ROOT, PYTHON, cli_args, config_workflow, copy_bundle, run_cli, torch_threads, train_overrides

sys.path.insert(0, str(BUNDLE_ROOT))

from networks import RIBCUNet  # noqa: E402
from networks.preprocessing import clean_mask, mask_cleanup_of, probability_to_mask  # noqa: E402
from scripts.recipe import MixedPrecision, ProgressiveResize, autocast_dtype, ema_multi_avg_fn, native_bf16, warmup_cosine  # noqa: E402
from scripts.transforms import RandHueSaturationd, RandVignetted  # noqa: E402
from scripts.tune_threshold import fold_threshold  # noqa: E402

RECIPE = ["train.json", "train_recipe.json"]
SCHEDULE = [[1, [16, 16]], [2, [32, 32]]]


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    with torch_threads(1):
        yield


def _small_net() -> RIBCUNet:
    torch.manual_seed(0)
    return RIBCUNet(channels=(4, 8, 16, 32, 64))


def test_bf16_autocast_runs_on_the_cpu_and_returns_float32():
    net = _small_net().to(memory_format=torch.channels_last)
    seen = []
    net.head.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    x = torch.rand(2, 3, 32, 32)
    y = MixedPrecision(net, "bf16", channels_last=True)(x)
    assert seen == [torch.bfloat16] and y.dtype == torch.float32
    y.sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in net.parameters() if p.requires_grad)
    with torch.no_grad():
        reference = MixedPrecision(net.eval(), "fp32")(x)
        assert seen[-1] == torch.float32
        assert torch.allclose(MixedPrecision(net, "bf16")(x), reference, atol=0.1 * float(reference.abs().max()) + 1e-3)
    with pytest.raises(ValueError, match="precision"):
        MixedPrecision(net, "int4")



def test_auto_precision_autocasts_only_where_bf16_is_native():
    net = _small_net()
    seen = []
    net.head.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    with torch.no_grad():
        MixedPrecision(net.eval(), "auto")(torch.rand(1, 3, 32, 32))
    assert seen == [torch.bfloat16 if native_bf16("cpu") else torch.float32]
    assert autocast_dtype("auto", "cpu") == (torch.bfloat16 if native_bf16("cpu") else None)
    assert autocast_dtype("bf16", "cpu") == torch.bfloat16 and autocast_dtype("fp32", "cuda") is None

def test_warmup_then_cosine():
    f = warmup_cosine(total_steps=100, warmup_steps=10, start_factor=0.1, final_factor=0.01)
    assert f(0) == pytest.approx(0.1) and f(10) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.01 + 0.99 * 0.5)
    assert f(100) == pytest.approx(0.01) and f(500) == pytest.approx(0.01)
    after = [f(s) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(after, after[1:]))
    with pytest.raises(ValueError):
        warmup_cosine(total_steps=10, warmup_steps=10)


def test_a_cool_down_has_no_warm_up():
    """``--warmup_epochs 0`` (the docs' cool-down of a run's EMA): the cosine starts at the full rate at step 0."""
    f = warmup_cosine(total_steps=300, warmup_steps=0, final_factor=0.01)
    assert f(0) == pytest.approx(1.0) and f(150) == pytest.approx(0.505) and f(300) == pytest.approx(0.01)


def test_a_resumed_schedule_follows_the_config():
    """Resumed with a larger ``--epochs``, the cosine is stretched: the checkpoint restores the step count, not
    the length, also from a checkpoint that saved the length (written before the schedule became a function)."""
    def scheduler(total_steps):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        return torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(total_steps=total_steps, warmup_steps=10))

    short = scheduler(100)
    for _ in range(50):
        short.optimizer.step()
        short.step()
    state = short.state_dict()
    old_style = {**state, "lr_lambdas": [{"total_steps": 100, "warmup_steps": 10, "start_factor": 0.01, "final_factor": 0.01}]}
    for saved in (state, old_style):
        longer = scheduler(200)
        longer.load_state_dict(saved)
        longer.optimizer.step()
        longer.step()
        assert longer.get_last_lr()[0] == pytest.approx(warmup_cosine(200, 10)(51))
        assert longer.get_last_lr()[0] > warmup_cosine(100, 10)(51) + 0.2


def test_from_scratch_the_ema_forgets_the_initialisation():
    """A batch-norm layer whose variance falls from its initial 1 to 0.01: after 200 updates the warmed-up average
    is there, while a fixed decay of 0.998 still holds two thirds of the initial value."""
    net = torch.nn.BatchNorm2d(4)
    averages = {warmup: torch.optim.swa_utils.AveragedModel(net, multi_avg_fn=ema_multi_avg_fn(0.998, warmup=warmup), use_buffers=True)
                for warmup in (True, False)}
    for ema in averages.values():
        ema.update_parameters(net)  # the first update copies the initialisation
    net.running_var.fill_(0.01)
    for _ in range(200):
        for ema in averages.values():
            ema.update_parameters(net)
    assert torch.allclose(averages[True].module.running_var, torch.full((4,), 0.01), rtol=1e-3)
    assert averages[False].module.running_var.min() > 0.6
    with pytest.raises(ValueError):
        ema_multi_avg_fn(1.5)


def test_progressive_resize_follows_the_epoch():
    resize = ProgressiveResize([[1, [16, 16]], [3, [32, 32]]])
    assert [resize.size_at(e) for e in (1, 2, 3, 9)] == [(16, 16), (16, 16), (32, 32), (32, 32)]
    label = torch.zeros(2, 1, 32, 32)
    label[:, :, 8:24, 8:24] = 1
    image, small = resize({"image": torch.rand(2, 3, 32, 32), "label": label})
    assert image.shape == (2, 3, 16, 16) and small.shape == (2, 1, 16, 16)
    assert set(small.unique().tolist()) == {0.0, 1.0} and small.sum() == 2 * 8 * 8
    resize.size = (32, 32)
    assert resize({"image": torch.ones(1, 3, 32, 32), "label": label[:1]})[1] is not None
    with pytest.raises(ValueError, match="epoch 1"):
        ProgressiveResize([[2, [16, 16]]])


def test_hue_saturation_keeps_luma_and_can_be_the_identity():
    image = torch.rand(3, 8, 8) * 0.5 + 0.25  # away from the clipping range
    identity = RandHueSaturationd("image", prob=1.0, hue=0.0, saturation=0.0)
    assert torch.allclose(identity({"image": image})["image"], image, atol=1e-5)
    jitter = RandHueSaturationd("image", prob=1.0, hue=0.1, saturation=0.2)
    jitter.set_random_state(0)
    out = jitter({"image": image})["image"]
    luma = torch.tensor([0.299, 0.587, 0.114])
    assert not torch.allclose(out, image, atol=1e-3)
    assert torch.allclose(torch.einsum("c,chw->hw", luma, out), torch.einsum("c,chw->hw", luma, image), atol=1e-4)


def test_vignette_darkens_the_corners_and_keeps_the_centre():
    image = torch.full((3, 33, 33), 0.5)
    vignette = RandVignetted("image", prob=1.0, strength_range=(0.8, 0.8), max_shift=0.0)
    out = vignette({"image": image})["image"]
    assert torch.allclose(out[:, 16, 16], image[:, 16, 16])
    assert torch.allclose(out[:, 0, 0], torch.full((3,), 0.5 * 0.2), atol=1e-6)
    assert (out <= image).all() and (out[:, 0, 16] > out[:, 0, 0]).all()
    assert torch.equal(RandVignetted("image", prob=0.0)({"image": image})["image"], image)


def test_a_folded_threshold_moves_the_zero_crossing():
    net = _small_net().eval()
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        net.head.weight.mul_(40.0)  # spread the random network's logits over both thresholds
        net.head.bias.sub_(float(net(x).median()) - 0.4)
        probability = torch.sigmoid(net(x))
        folded = _small_net().eval()
        folded.load_state_dict(fold_threshold(net.state_dict(), 0.3))
        logits = folded(x)
    assert torch.equal(logits > 0, probability > 0.3) and not torch.equal(logits > 0, probability > 0.5)


def test_clean_mask():
    mask = np.zeros((20, 20), bool)
    mask[2:12, 2:12] = True
    mask[5:7, 5:7] = False  # a hole
    mask[15:17, 15:17] = True  # a speck
    assert clean_mask(mask, "none").sum() == mask.sum()
    assert clean_mask(mask, "largest").sum() == 100 - 4
    assert clean_mask(mask, "fill_holes").sum() == 100 + 4
    assert clean_mask(mask, "largest+fill_holes").sum() == 100
    with pytest.raises(ValueError):
        clean_mask(mask, "dilate")


def test_hole_filling_matches_scipy_and_masks_are_cleaned_per_image():
    rng = np.random.default_rng(0)
    for i in range(100):  # random masks, some with many holes, some with none, some touching the border
        mask = rng.random((int(rng.integers(1, 30)), int(rng.integers(1, 30)))) < rng.random()
        mask = ndimage.binary_dilation(mask) if i % 2 else mask
        np.testing.assert_array_equal(clean_mask(mask, "fill_holes"), ndimage.binary_fill_holes(mask))
        canvas = np.zeros((40, 50), bool)  # the same mask somewhere in a larger photo, at its edges too
        top, left = int(rng.integers(0, 41 - mask.shape[0])), int(rng.integers(0, 51 - mask.shape[1]))
        canvas[top : top + mask.shape[0], left : left + mask.shape[1]] = mask
        np.testing.assert_array_equal(clean_mask(canvas, "fill_holes"), ndimage.binary_fill_holes(canvas))
    probability = torch.zeros(2, 1, 20, 20)
    probability[0, 0, 2:12, 2:12] = 0.9
    probability[0, 0, 15:17, 15:17] = 0.9
    probability[1, 0, 15:17, 15:17] = 0.9  # the second image's only component is kept
    mask = probability_to_mask(probability, 0.5, "largest")
    assert mask.dtype == torch.uint8 and mask.shape == probability.shape
    assert mask[0].sum() == 100 and mask[1].sum() == 4
    with pytest.raises(ValueError, match="mask_cleanup"):
        mask_cleanup_of({"network_data_format": {"outputs": {"pred": {"mask_cleanup": "dilate"}}}})
    assert mask_cleanup_of({}) == "none"


def _log(bundle):
    with open(bundle / "eval" / "train_log.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_the_recipe_trains_resumes_and_keeps_the_ema(tmp_path):
    """Two epochs (16 px, then 32 px) in process, then a third from the command line: one schedule."""
    bundle = copy_bundle(tmp_path / "bundle")
    overrides = train_overrides(bundle, train_sizes=SCHEDULE, ema_decay=0.5)
    workflow = config_workflow(bundle, RECIPE, "train", **overrides)
    workflow.initialize()
    assert workflow.check_properties() == []
    workflow.run()
    workflow.finalize()

    checkpoint = torch.load(bundle / "models" / "checkpoint_epoch=2.pt", map_location="cpu", weights_only=True)
    assert {"model", "ema", "optimizer", "lr_scheduler"} <= set(checkpoint)
    steps = checkpoint["trainer"]["iteration"]
    assert int(checkpoint["ema"]["n_averaged"]) == steps == checkpoint["lr_scheduler"]["last_epoch"]  # per iteration
    ema_weights = {k[len("module."):]: v for k, v in checkpoint["ema"].items() if k.startswith("module.")}
    best = torch.load(bundle / "models" / "model.pt", map_location="cpu", weights_only=True)
    if checkpoint["best_model_saver"]["best_epoch"] == 2:  # model.pt is the EMA, not the raw weights
        assert all(torch.equal(best[k], ema_weights[k]) for k in best)
        assert any(not torch.equal(best[k], checkpoint["model"][k]) for k in best if best[k].is_floating_point())

    proc = run_cli([PYTHON, "-m", "monai.bundle", "run", "--config_file", repr([str(bundle / "configs" / c) for c in RECIPE]),
                    *cli_args({**overrides, "epochs": 3})], cwd=tmp_path)
    assert "checkpoint_epoch=2.pt" in proc.stdout + proc.stderr
    rows = _log(bundle)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    resumed = torch.load(bundle / "models" / "checkpoint_epoch=3.pt", map_location="cpu", weights_only=True)
    assert int(resumed["ema"]["n_averaged"]) == resumed["trainer"]["iteration"] == 3 * resumed["trainer"]["epoch_length"]
    assert all(math.isfinite(float(r["val_mean_jaccard"])) for r in rows)

    # the threshold is picked on the validation split and folded into the weights
    data = {k: str(v) for k, v in overrides.items() if k in ("dataset_dir", "datalist_file")}
    folded_file = tmp_path / "folded.pt"
    proc = run_cli([PYTHON, bundle / "scripts" / "tune_threshold.py", "--bundle_root", bundle, "--ckpt_file", bundle / "models" / "model.pt",
                    "--config_file", "configs/train.json", "configs/train_recipe.json", "configs/evaluate.json",
                    "--fold", folded_file, "--thresholds", "0.4", "0.5", "0.6", "--override",
                    *[f"{k}={v}" for k, v in data.items()], "image_size=[32,32]"], cwd=tmp_path)
    table = [line for line in proc.stdout.splitlines() if line.startswith("| 0.")]
    assert len(table) == 3 * 4  # thresholds x clean-ups
    best = json.loads(proc.stdout.splitlines()[-2])["best"]
    assert abs(best["mean_jaccard"] - max(float(line.split("|")[3]) for line in table)) < 1e-4  # the table rounds
    chosen = best["threshold"]
    weights = torch.load(bundle / "models" / "model.pt", weights_only=True)
    folded = torch.load(folded_file, weights_only=True)
    shift = math.log(chosen / (1 - chosen))
    assert torch.allclose(folded["head.bias"], weights["head.bias"] - shift)
