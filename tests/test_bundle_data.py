# Copyright (c) the dermseg contributors. Apache-2.0.
"""The bundle's data split, test sample, scores and helpers, and the variant comparison command."""

from __future__ import annotations

import json
import math
import os
import sys
import zipfile

import numpy as np
import PIL.Image
import pytest
import torch

from _bundle_helpers import BUNDLE_ROOT, PYTHON, SAMPLE_DATALIST, SAMPLE_DIR, SHARED_ISIC_256, copy_bundle, run_cli, torch_threads

sys.path.insert(0, str(BUNDLE_ROOT))  # the bundle's `scripts` package, as `monai.bundle run` makes it importable

from scripts import make_datalist as mdl  # noqa: E402
from scripts.checkpoints import PruneCheckpoints, latest_checkpoint  # noqa: E402
from scripts.inferers import FlipAveragingInferer  # noqa: E402
from scripts.metrics import confusion_counts, image_scores, summarise  # noqa: E402
from scripts.transforms import LogitsToOriginalSized  # noqa: E402

SPLITS = ("training", "validation", "testing")



@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    with torch_threads(1):
        yield

def _ids(entries):
    return [e["image"].split("/")[-1][: -len(".jpg")] for e in entries]


def test_shipped_split_is_the_papers_7_1_2_and_deterministic():
    datalist = json.loads((BUNDLE_ROOT / "configs" / "datalist.json").read_text())
    sizes = [len(datalist[k]) for k in SPLITS]
    assert sizes == [1815, 259, 520]
    ids = [set(_ids(datalist[k])) for k in SPLITS]
    assert sum(len(s) for s in ids) == 2594 and len(set.union(*ids)) == 2594  # disjoint
    for entry in (e for k in SPLITS for e in datalist[k]):
        assert not entry["image"].startswith("/") and ".." not in entry["image"]  # relative to dataset_dir
        case = entry["image"].split("/")[-1][:-4]
        assert entry == {"image": f"{mdl.IMAGE_DIR}/{case}.jpg", "label": f"{mdl.LABEL_DIR}/{case}_segmentation.png"}
    # the same seed over the same IDs gives the same split, whatever order they come in
    again = mdl.split_cases(sorted(set.union(*ids), reverse=True), seed=datalist["seed"])
    assert [set(again[k]) for k in SPLITS] == ids
    assert [set(mdl.split_cases(sorted(set.union(*ids)), seed=datalist["seed"] + 1)[k]) for k in SPLITS] != ids


@pytest.mark.skipif(not SHARED_ISIC_256.is_dir(), reason="../shared/data/isic2018_task1_256 is not present")
def test_shipped_datalist_regenerates_from_the_data(tmp_path):
    out = tmp_path / "datalist.json"
    mdl.main([str(SHARED_ISIC_256), str(out)])
    assert out.read_text() == (BUNDLE_ROOT / "configs" / "datalist.json").read_text()


def test_test_sample_is_real_small_and_attributed():
    datalist = json.loads(SAMPLE_DATALIST.read_text())
    assert [len(datalist[k]) for k in SPLITS] == [10, 3, 3]
    for entry in (e for k in SPLITS for e in datalist[k]):
        image = PIL.Image.open(SAMPLE_DIR / entry["image"])
        mask = np.asarray(PIL.Image.open(SAMPLE_DIR / entry["label"]))
        assert image.size == (64, 64) and image.mode == "RGB"
        assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 255} and mask.any()
    readme = (SAMPLE_DIR / "README.md").read_text()
    assert "CC BY-NC 4.0" in readme and "Codella" in readme and "Tschandl" in readme


def test_scores_of_known_masks():
    truth = np.zeros((4, 5), bool)
    truth[1:3, 1:4] = True  # 6 lesion pixels
    pred = np.zeros_like(truth)
    pred[1:3, 2:5] = True  # 6 predicted, 4 of them right
    counts = confusion_counts(pred, truth)
    assert counts == {"tp": 4, "fp": 2, "fn": 2, "tn": 12}
    s = image_scores(counts)
    assert s["jaccard"] == pytest.approx(0.5) and s["dice"] == pytest.approx(8 / 12)
    assert s["accuracy"] == pytest.approx(16 / 20) and s["sensitivity"] == pytest.approx(4 / 6) and s["specificity"] == pytest.approx(12 / 14)
    assert s["thresholded_jaccard"] == 0.0  # 0.5 < 0.65
    perfect = confusion_counts(truth, truth)
    assert image_scores(perfect)["thresholded_jaccard"] == 1.0
    empty = image_scores(confusion_counts(np.zeros((3, 3)), np.zeros((3, 3))))
    assert empty["jaccard"] == 1.0 and math.isnan(empty["sensitivity"])
    summary = summarise([counts, perfect])
    assert summary["mean_jaccard"] == pytest.approx(0.75)
    assert summary["pooled_jaccard"] == pytest.approx((4 + 6) / (4 + 2 + 2 + 6))
    assert summary["mean_thresholded_jaccard"] == pytest.approx(0.5)


def test_extra_datalists_are_appended_to_training(tmp_path):
    from monai.bundle import ConfigParser

    sample = json.loads(SAMPLE_DATALIST.read_text())
    extra = tmp_path / "edge" / "edge_datalist.json"
    extra.parent.mkdir()
    extra.write_text(json.dumps({"training": [{k: str(SAMPLE_DIR / v) for k, v in e.items()} for e in sample["testing"]]}))
    parser = ConfigParser()
    parser.read_config(str(BUNDLE_ROOT / "configs" / "train.json"))
    parser.update({"dataset_dir": str(SAMPLE_DIR), "datalist_file": str(SAMPLE_DATALIST), "extra_datalists": [str(extra)]})
    data = parser.get_parsed_content("train#datalist")
    assert len(data) == 10 + 3
    assert data[-1]["image"] == str(SAMPLE_DIR / sample["testing"][-1]["image"])  # absolute paths kept as they are
    assert all(os.path.isfile(d["image"]) and os.path.isfile(d["label"]) for d in data)


def test_flip_averaging_and_resize_back():
    x = torch.rand(2, 1, 16, 32)
    assert torch.equal(FlipAveragingInferer()(x, lambda t: t * 2), x * 2)
    # an equivariant network gives the same answer with or without flip averaging
    assert torch.allclose(FlipAveragingInferer([[], [2], [3], [2, 3]])(x, torch.nn.Sigmoid()), torch.sigmoid(x))
    out = LogitsToOriginalSized(keys="pred")({"pred": torch.zeros(1, 32, 32), "image_original_size": torch.tensor([48, 80])})
    assert out["pred"].shape == (1, 48, 80) and torch.allclose(out["pred"], torch.full((1, 48, 80), 0.5))


def test_resume_checkpoint_lookup_skips_truncated_files(tmp_path):
    assert latest_checkpoint(str(tmp_path)) == ""
    for n, epoch in enumerate((60, 3, 10, 11)):  # an old run's epoch 60, then a fresh run's epochs
        torch.save({"epoch": epoch}, tmp_path / f"checkpoint_epoch={epoch}.pt")
        os.utime(tmp_path / f"checkpoint_epoch={epoch}.pt", (1e9 + n, 1e9 + n))
    assert latest_checkpoint(str(tmp_path)).endswith("checkpoint_epoch=11.pt")  # the newest, not the highest
    data = (tmp_path / "checkpoint_epoch=11.pt").read_bytes()
    (tmp_path / "checkpoint_epoch=11.pt").write_bytes(data[: len(data) // 2])  # killed while writing
    assert not zipfile.is_zipfile(tmp_path / "checkpoint_epoch=11.pt")
    assert latest_checkpoint(str(tmp_path)).endswith("checkpoint_epoch=10.pt")
    PruneCheckpoints(str(tmp_path), keep=2)()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_epoch=10.pt", "checkpoint_epoch=11.pt"]


def test_compare_trains_evaluates_and_prints_the_table(tmp_path):
    """The documented comparison command on a smoke schedule: an ablation, the paper's model and a MONAI peer."""
    bundle = copy_bundle(tmp_path / "bundle")
    work = tmp_path / "compare"
    proc = run_cli(
        [
            PYTHON, bundle / "scripts" / "compare.py", "--work_dir", work, "--train", "--evaluate",
            "--variants", "unet", "ribcunet", "monai_attention_unet", "--output", work / "table.md",
            "--override", f"dataset_dir={SAMPLE_DIR}", f"datalist_file={SAMPLE_DATALIST}", "image_size=[32,32]",
            "epochs=1", "batch_size=4", "num_workers=0", "report=False",
        ],
        cwd=tmp_path,
    )
    table = (work / "table.md").read_text()
    assert table.strip() in proc.stdout
    lines = [line for line in table.strip().splitlines() if line.startswith("|")]
    assert lines[0].startswith("| Method | Accuracy | Jaccard |") and len(lines) == 2 + 3
    assert "| 0.934 / 0.831 |" in lines[3] and "R2U-Net 0.929 / 0.827" in table  # the paper's figures, its model's row
    rows = json.loads((work / "table.json").read_text())
    assert [r["variant"] for r in rows] == ["unet", "ribcunet", "monai_attention_unet"]
    for r in rows:
        assert 0 <= r["mean_accuracy"] <= 1 and 0 <= r["mean_jaccard"] <= 1 and r["num_images"] == 3
        assert r["params_m"] > 0 and r["gflops"] > 0 and r["cpu_ms"] > 0
        assert (work / r["variant"] / "models" / "model.pt").is_file()
    # the residual Inception + bidirectional ConvGRU model is the costliest of the three at the same widths
    assert rows[1]["gflops"] > rows[0]["gflops"]


def test_compare_with_the_recipe_trains_a_peer_with_its_ema_and_says_so(tmp_path):
    """``--recipe`` layers train_recipe.json over train.json for every variant, a MONAI peer included."""
    bundle = copy_bundle(tmp_path / "bundle")
    work = tmp_path / "compare"
    proc = run_cli(
        [
            PYTHON, bundle / "scripts" / "compare.py", "--work_dir", work, "--recipe", "--train", "--evaluate",
            "--variants", "monai_unet", "--latency_repeats", "0", "--output", work / "table.md",
            "--override", f"dataset_dir={SAMPLE_DIR}", f"datalist_file={SAMPLE_DATALIST}", "image_size=[32,32]",
            "train_sizes=[[1,[32,32]]]", "epochs=2", "batch_size=4", "num_workers=0", "report=False",
        ],
        cwd=tmp_path,
    )
    assert "Recipe: configs/train_recipe.json over configs/train.json, colour constancy none." in proc.stdout
    checkpoint = torch.load(next((work / "monai_unet" / "models").glob("checkpoint_epoch=*.pt")), weights_only=False)
    assert "ema" in checkpoint  # the recipe's averaged weights, kept and validated for the peer too
    (row,) = json.loads((work / "table.json").read_text())
    assert 0 <= row["mean_jaccard"] <= 1 and row["num_images"] == 3
