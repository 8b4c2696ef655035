# Copyright (c) the dermseg contributors. Apache-2.0.
"""Federated against central fine-tuning, on simulated sites whose images differ: what does FedAvg cost?

    .venv/bin/python benchmarks/federated.py [--train-per-site 40] [--heldout-per-site 40] [--rounds 2]
        [--local-epochs 1] [--learning-rate 0.0001] [--work runs/federated_bench]

Three sites, each with its own photos, drawn without overlap from the bundle's split (``configs/datalist.json``):
training cases from its training split, held-out cases from its validation split (never the test split):

- ``isic256``: the 256-px copy as it is;
- ``isic512``: the 512-px copy (another camera resolution);
- ``dermoscope``: the 256-px copy under a warm light and with a vignette (``robustness.py``'s shifts), as another
  dermoscope gives; its photos are written to its own folder as PNGs, as an edge store holds them.

Each site's training cases are a datalist of absolute paths, as ``python -m monai_app.edge --store DIR datalist``
writes it.  Three models, all from the deployed ``models/model.pt`` with the shipped model's recipe
(``train_recipe.json``, at 256 px), the same learning rate, batch and budget:

- (a) the deployed model;
- (b) central: the bundle's own fine-tune on the pooled sites' training cases (the sites' datalists as
  ``extra_datalists``), ``rounds x local epochs`` epochs; its last epoch's weights;
- (c) federated: ``training_bundle/scripts/federated.py simulate`` over the three sites (FedAvg in NVIDIA FLARE's
  simulator), ``rounds`` rounds of ``local epochs``; the global model after the last round.

Each is scored on every site's held-out photos through the app's own code (``operators.segmentation``) with its
float ONNX export, at the photo's size (mean Jaccard).  Prints a Markdown table.  Needs ``../shared/data`` (the
ISIC copies).  About 10-15 minutes on 2 CPU cores with the defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import PIL.Image
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
BUNDLE = REPO / "training_bundle"
SHARED = REPO.parent / "shared" / "data"

from robustness import shifted  # noqa: E402  (this folder: the same shifts as the robustness benchmark)

from networks.preprocessing import read_mask, read_rgb  # noqa: E402
from operators.case import Case  # noqa: E402
from operators.confidence import jaccard  # noqa: E402
from operators.model import load_model  # noqa: E402
from operators.segmentation import segment_cases  # noqa: E402

SITES = ("isic256", "isic512", "dermoscope")
# the shipped model was trained with the modern recipe, whose layer also gives its network colour constancy: every
# fine-tune keeps it, at the model's size (the recipe's progressive resizing is for training from scratch)
SHIPPED_RECIPE = [str(BUNDLE / "configs" / "train.json"), str(BUNDLE / "configs" / "train_recipe.json")]
SERVING_SIZE = "[[1,[256,256]]]"


def run(args: List, log: Path) -> float:
    """Run a command from the repository root (32 MiB stack, as the Makefile runs everything); its output to ``log``."""
    start = time.monotonic()
    command = ["bash", "-c", 'ulimit -s 32768 2>/dev/null; exec "$0" "$@"', *map(str, args)]
    with open(log, "w") as out:
        code = subprocess.run(command, cwd=REPO, env=dict(os.environ, PYTHONUNBUFFERED="1"), stdout=out, stderr=subprocess.STDOUT).returncode
    if code != 0:
        raise SystemExit(f"failed ({code}): {' '.join(map(str, args))}\n{log.read_text()[-4000:]}")
    return time.monotonic() - start


def make_sites(work: Path, n_train: int, n_heldout: int, seed: int) -> Dict[str, dict]:
    """Each site's training datalist (written to ``work/sites/<site>.json``) and held-out cases (absolute paths)."""
    split = json.loads((BUNDLE / "configs" / "datalist.json").read_text())
    rng = random.Random(seed)
    train = rng.sample(split["training"], n_train * len(SITES))
    heldout = rng.sample(split["validation"], n_heldout * len(SITES))
    sites = {}
    for index, site in enumerate(SITES):
        data = SHARED / ("isic2018_task1_512" if site == "isic512" else "isic2018_task1_256")
        folder = work / "sites" / site
        folder.mkdir(parents=True, exist_ok=True)
        cases = {}
        for part, items, n in (("training", train, n_train), ("heldout", heldout, n_heldout)):
            cases[part] = []
            for item in items[index * n : (index + 1) * n]:
                image, label = data / item["image"], data / item["label"]
                if site == "dermoscope":  # another dermoscope's light and optics, written as the store keeps photos
                    photo = shifted(shifted(read_rgb(image), "warm light"), "vignette")
                    image = folder / (Path(item["image"]).stem + ".png")
                    PIL.Image.fromarray(photo).save(image)
                cases[part].append({"image": str(image), "label": str(label)})
        datalist = work / "sites" / f"{site}.json"
        datalist.write_text(json.dumps({"training": cases["training"]}, indent=1))
        sites[site] = {"datalist": datalist, "heldout": cases["heldout"]}
    return sites


def score(model_file: Path, cases: List[dict]) -> float:
    """Mean Jaccard of the model on ``cases``, run as the app runs it (CPU, the float ONNX model), at each photo's size."""
    model, info = load_model(model_file, "cpu", precision="fp32")
    photos = [Case(source_file=c["image"], rgb=read_rgb(c["image"])) for c in cases]
    segment_cases(photos, model, info, torch.device("cpu"), 8)
    scores = []
    for case, item in zip(photos, cases):
        if not case.ok:
            raise RuntimeError(f"{case.source_file}: {case.error}")
        scores.append(jaccard(case.mask, read_mask(item["label"])))
    return float(np.mean(scores))


def central(work: Path, sites: Dict[str, dict], epochs: int, overrides: Dict[str, str], log: Path) -> Path:
    """The bundle's fine-tune on the pooled site data; returns its last epoch's ONNX export."""
    pooled = [c for s in sites.values() for c in json.loads(s["datalist"].read_text())["training"]]
    # ISIC's split is not trained on here: the training data are the sites' datalists alone, validated on them as
    # each federated site validates on its own training cases
    shutil.rmtree(work / "central", ignore_errors=True)  # a rerun trains afresh rather than resuming
    split = work / "central" / "split.json"
    split.parent.mkdir(parents=True, exist_ok=True)
    split.write_text(json.dumps({"training": [], "validation": pooled}))
    args = [sys.executable, "-m", "monai.bundle", "run", "--config_file", repr(SHIPPED_RECIPE), "--train_sizes", SERVING_SIZE,
            "--bundle_root", BUNDLE, "--datalist_file", split,
            "--extra_datalists", repr([str(s["datalist"]) for s in sites.values()]),
            "--pretrained_checkpoint", BUNDLE / "models" / "model.pt", "--resume", "False", "--epochs", epochs,
            "--ckpt_dir", work / "central" / "models", "--output_dir", work / "central" / "eval"]
    for key, value in overrides.items():
        args += [f"--{key}", value]
    seconds = run(args, log)
    final = work / "central" / "models" / f"checkpoint_epoch={epochs}.pt"
    onnx = work / "central" / "model.onnx"
    run([sys.executable, BUNDLE / "scripts" / "export_onnx.py", "--bundle_root", BUNDLE, "--filepath", onnx, "--ckpt_file", final,
         "--config_file", "configs/train.json", "configs/train_recipe.json", "configs/inference.json"], log.with_suffix(".export.log"))
    print(f"central fine-tune: {seconds / 60:.1f} min", file=sys.stderr, flush=True)
    return onnx


def federated(work: Path, sites: Dict[str, dict], rounds: int, local_epochs: int, overrides: Dict[str, str], log: Path) -> Path:
    """The FLARE simulation of the same fine-tune; returns the global model's ONNX export."""
    args = [sys.executable, BUNDLE / "scripts" / "federated.py", "simulate", "--rounds", rounds, "--local-epochs", local_epochs,
            "--work", work / "federated"]
    for site in sites.values():
        args += ["--site", site["datalist"]]
    for key, value in overrides.items():
        args += [f"--{key}", value]
    seconds = run(args, log)
    print(f"federated fine-tune and exports: {seconds / 60:.1f} min", file=sys.stderr, flush=True)
    return work / "federated" / "models" / "model.onnx"


def _count(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-per-site", type=int, default=40)
    parser.add_argument("--heldout-per-site", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--learning-rate", default="0.0001")
    parser.add_argument("--threads", default="1", help="torch threads of each training process (a site's, the central run's)")
    parser.add_argument("--seed", type=int, default=2018)
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "federated_bench")
    args = parser.parse_args(argv)
    if not (SHARED / "isic2018_task1_256").is_dir() or not (SHARED / "isic2018_task1_512").is_dir():
        print(f"SKIP: no ISIC copies under {SHARED}")
        return 0
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    sites = make_sites(work, args.train_per_site, args.heldout_per_site, args.seed)
    # the cases are cached and the augmentation is flips: no data-loading processes beside the training
    epochs = args.rounds * args.local_epochs
    # the same schedule for both: the recipe's one warm-up epoch where there are more epochs than that
    overrides = {"learning_rate": args.learning_rate, "num_threads": args.threads, "num_workers": "0",
                 "warmup_epochs": "1" if epochs > 1 else "0"}
    models = {
        "deployed (models/model.onnx)": BUNDLE / "models" / "model.onnx",
        f"central fine-tune, pooled sites, {_count(epochs, 'epoch')}": central(work, sites, epochs, overrides, work / "central.log"),
        f"federated FedAvg, {_count(args.rounds, 'round')} x {_count(args.local_epochs, 'epoch')}": federated(
            work, sites, args.rounds, args.local_epochs, overrides, work / "federated.log"),
    }
    rows = {name: {site: score(path, s["heldout"]) for site, s in sites.items()} for name, path in models.items()}
    print(f"\nHeld-out mean Jaccard, {args.heldout_per_site} validation-split photos per site; each fine-tune on "
          f"{args.train_per_site} training-split photos per site, lr {args.learning_rate}, the shipped model's recipe, from the deployed weights\n")
    print("| model | " + " | ".join(SITES) + " | mean |")
    print("|---|" + "---:|" * (len(SITES) + 1))
    for name, row in rows.items():
        print(f"| {name} | " + " | ".join(f"{row[s]:.4f}" for s in SITES) + f" | {np.mean(list(row.values())):.4f} |")
    (work / "table.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
