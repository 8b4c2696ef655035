# Copyright (c) the dermseg contributors. Apache-2.0.
"""Pick the mask threshold and the mask clean-up on the **validation** split, and fold the threshold into the
weights, so that every runtime keeps reading "lesion where the logit is above 0".

    python training_bundle/scripts/tune_threshold.py --bundle_root training_bundle --ckpt_file runs/x/models/model.pt
    python training_bundle/scripts/tune_threshold.py --bundle_root training_bundle --ckpt_file runs/x/models/model.pt \\
        --fold training_bundle/models/model.pt
    # a model trained with the modern recipe: its layer too, for the recipe's network settings
    python training_bundle/scripts/tune_threshold.py --bundle_root training_bundle --ckpt_file runs/x/models/model.pt \\
        --config_file configs/train.json configs/train_recipe.json configs/evaluate.json

It reads ``train.json`` with ``evaluate.json`` layered over it and scores each validation image as that evaluation
scores the test split (the probability at the image's original size, mean Jaccard over images) at every threshold
of ``--thresholds`` and with each clean-up of ``networks.preprocessing.clean_mask`` (keep the largest component,
fill holes), and prints the table.  The best pair is chosen jointly.  With ``--fold`` it writes the weights
with that pair's threshold ``t`` folded into the output convolution's bias (``bias - log(t / (1 - t))``): the
sigmoid of the new logits crosses 0.5 where the old ones crossed ``t``.  The pair's clean-up goes into the
bundle's ``metadata.json`` as ``network_data_format.outputs.pred.mask_cleanup``, where the evaluation and the app
read it (``networks.preprocessing.mask_cleanup_of``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Dict, List, Sequence

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from networks.durable import atomic_write_with  # noqa: E402
from networks.preprocessing import CLEANUPS, clean_mask, logits_to_probability  # noqa: E402
from scripts._config import EVALUATE_CONFIGS, load_config, parse_overrides  # noqa: E402
from scripts.metrics import confusion_counts, image_scores  # noqa: E402

__all__ = ["validation_probabilities", "score_table", "fold_threshold"]

DEFAULT_THRESHOLDS = (0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7)


def validation_probabilities(
    bundle_root: str, ckpt_file: str, overrides: Dict | None = None, config_file: Sequence[str] = EVALUATE_CONFIGS
):
    """Yield ``(probability (H, W), label (H, W))`` for each validation image, by the evaluation's data and network
    (``config_file``: ``train.json`` and ``evaluate.json``, plus any layer the model was trained with)."""
    parser = load_config(bundle_root, config_file, {"datalist_key": "validation", "num_workers": 0, **(overrides or {})})
    network = parser.get_parsed_content("network_def").eval()
    state = torch.load(ckpt_file, map_location="cpu", weights_only=True)
    network.load_state_dict(state)
    for item in parser.get_parsed_content("dataset"):
        with torch.inference_mode():
            logits = network(item["image"][None])
        size = [int(s) for s in item["image_original_size"]]
        yield logits_to_probability(logits, size)[0, 0].numpy(), np.asarray(item["label"])[0] > 0


def score_table(pairs, thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> List[Dict]:
    """Mean Jaccard over the images for every (threshold, clean-up) pair."""
    sums: Dict[tuple, float] = {}
    count = 0
    for probability, label in pairs:
        count += 1
        for t in thresholds:
            raw = probability >= t
            for cleanup in CLEANUPS:
                mask = clean_mask(raw, cleanup)
                sums[(t, cleanup)] = sums.get((t, cleanup), 0.0) + image_scores(confusion_counts(mask, label))["jaccard"]
    if not count:
        raise ValueError("no validation images")
    return [{"threshold": t, "cleanup": c, "mean_jaccard": s / count, "images": count} for (t, c), s in sums.items()]


def fold_threshold(state: Dict[str, torch.Tensor], threshold: float, bias_key: str = "head.bias") -> Dict[str, torch.Tensor]:
    """A copy of ``state`` whose output logits cross 0 where the original's probability crosses ``threshold``."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    folded = dict(state)
    folded[bias_key] = state[bias_key] - math.log(threshold / (1.0 - threshold))
    return folded


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle_root", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    ap.add_argument("--ckpt_file", required=True, help="weights to tune (a model.pt state dict)")
    ap.add_argument("--thresholds", type=float, nargs="+", default=list(DEFAULT_THRESHOLDS))
    ap.add_argument("--fold", metavar="OUT_PT", help="write the weights with the best pair's threshold folded in")
    ap.add_argument("--config_file", nargs="+", default=list(EVALUATE_CONFIGS),
                    help="config files, layered in this order (default: train.json, evaluate.json; a recipe-trained model: "
                    "train.json, train_recipe.json, evaluate.json)")
    ap.add_argument("--override", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides, e.g. dataset_dir=...")
    args = ap.parse_args(argv)
    pairs = validation_probabilities(args.bundle_root, args.ckpt_file, parse_overrides(args.override), args.config_file)
    rows = score_table(pairs, args.thresholds)
    print("| threshold | clean-up | validation mean Jaccard |\n|---:|---|---:|")
    for row in sorted(rows, key=lambda r: (r["cleanup"], r["threshold"])):
        print(f"| {row['threshold']:.2f} | {row['cleanup']} | {row['mean_jaccard']:.4f} |")
    plain = max((r for r in rows if r["cleanup"] == "none"), key=lambda r: r["mean_jaccard"])
    best = max(rows, key=lambda r: r["mean_jaccard"])
    print(json.dumps({"best_plain": plain, "best": best}))
    if args.fold:
        state = torch.load(args.ckpt_file, map_location="cpu", weights_only=True)
        os.makedirs(os.path.dirname(os.path.abspath(args.fold)), exist_ok=True)
        folded = fold_threshold(state, best["threshold"])
        atomic_write_with(args.fold, lambda tmp: torch.save(folded, tmp))
        print(f"wrote {args.fold} with threshold {best['threshold']} folded into head.bias; its metadata.json's "
              f"network_data_format.outputs.pred.mask_cleanup: {best['cleanup']!r}")


if __name__ == "__main__":
    main()
