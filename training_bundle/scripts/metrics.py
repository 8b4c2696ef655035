# Copyright (c) the dermseg contributors. Apache-2.0.
"""Segmentation scores of binary lesion masks, per image and over a test set.

Published ISIC numbers mix metrics (mean or pooled Jaccard, with or without the challenge's 0.65 cut-off), so every one is computed here from the same confusion counts:

- per image: Jaccard, Dice, pixel accuracy, sensitivity, specificity and the ISIC thresholded Jaccard
  (``J if J >= 0.65 else 0``);
- over the set: the mean of each per-image score, and the pooled (dataset-level) Jaccard and Dice from the
  summed counts, which weight large lesions more.

An image whose prediction and ground truth are both empty scores a Jaccard and Dice of 1 (a perfect answer);
a ratio whose denominator is 0 otherwise (sensitivity with no lesion, specificity with no background) is NaN and
left out of that mean, as the ISIC scorer does.
"""

from __future__ import annotations

import math
from typing import Dict, Iterable, List, Mapping

import numpy as np

__all__ = ["ISIC_JACCARD_THRESHOLD", "PER_IMAGE_METRICS", "confusion_counts", "image_scores", "summarise"]

ISIC_JACCARD_THRESHOLD = 0.65
PER_IMAGE_METRICS = ("jaccard", "dice", "accuracy", "sensitivity", "specificity", "thresholded_jaccard")


def confusion_counts(prediction, target) -> Dict[str, int]:
    """``tp``/``fp``/``fn``/``tn`` pixel counts of two same-shaped masks (anything non-zero is lesion)."""
    pred = np.asarray(prediction).astype(bool)
    true = np.asarray(target).astype(bool)
    if pred.shape != true.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {true.shape} differ in shape")
    tp = int(np.count_nonzero(pred & true))
    fp = int(np.count_nonzero(pred & ~true))
    fn = int(np.count_nonzero(~pred & true))
    return {"tp": tp, "fp": fp, "fn": fn, "tn": int(pred.size) - tp - fp - fn}


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den > 0 else math.nan


def image_scores(counts: Mapping[str, int]) -> Dict[str, float]:
    """The per-image scores of one image's confusion counts."""
    tp, fp, fn, tn = (counts[k] for k in ("tp", "fp", "fn", "tn"))
    union = tp + fp + fn
    jaccard = 1.0 if union == 0 else tp / union
    dice = 1.0 if union == 0 else 2.0 * tp / (2.0 * tp + fp + fn)
    return {
        "jaccard": jaccard,
        "dice": dice,
        "accuracy": _ratio(tp + tn, tp + fp + fn + tn),
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "thresholded_jaccard": jaccard if jaccard >= ISIC_JACCARD_THRESHOLD else 0.0,
    }


def summarise(rows: Iterable[Mapping[str, float]]) -> Dict[str, float]:
    """Set-level scores of per-image rows holding confusion counts (and optionally their scores).

    Returns ``mean_<metric>`` for every per-image metric, ``pooled_jaccard``/``pooled_dice``/``pooled_accuracy``
    from the summed counts, and ``num_images``.
    """
    rows = list(rows)
    if not rows:
        raise ValueError("no images to summarise")
    scores: List[Dict[str, float]] = [image_scores(r) for r in rows]
    out: Dict[str, float] = {"num_images": len(rows)}
    for name in PER_IMAGE_METRICS:
        values = np.array([s[name] for s in scores], dtype=float)
        out[f"mean_{name}"] = float(np.nanmean(values)) if np.isfinite(values).any() else math.nan
    tp, fp, fn, tn = (sum(int(r[k]) for r in rows) for k in ("tp", "fp", "fn", "tn"))
    out["pooled_jaccard"] = _ratio(tp, tp + fp + fn)
    out["pooled_dice"] = _ratio(2 * tp, 2 * tp + fp + fn)
    out["pooled_accuracy"] = _ratio(tp + tn, tp + fp + fn + tn)
    return out
