# Copyright (c) the dermseg contributors. Apache-2.0.
"""How sure the model is of one segmentation, from its probability map alone (plain numpy, no SDK).

Kept free of the SDK so ``benchmarks/confidence_eval.py`` computes exactly what the app computes, and free of the
environment: the routing threshold is a value the caller passes (the app reads ``DERMSEG_CONFIDENCE_THRESHOLD`` in
``monai_app.settings``).

The score multiplies two signs of a failed segmentation, each in [0, 1]:

- *uncertain area*: ``1 - min(#pixels with 0.1 < p < 0.9 / #lesion pixels, 1)``: a good segmentation has a thin
  uncertain rim around a solid lesion, a failed one a wide washed-out zone as large as the lesion itself;
- *border contact*: ``1 - the share of the image's edge pixels inside the mask``: a lesion mask that runs along
  the image border is usually the dark vignette of the dermoscope, or a lesion cut off by the frame.

No lesion at all (no pixel at p >= 0.5) scores 0: a dermoscopy image always shows one.  Optionally the
agreement (Dice) of the mask with the mask of the horizontally flipped image multiplies in.

Chosen by measurement (``benchmarks/confidence_eval.py``, README "Confidence"): on the 520 test images with the
provisional model 0.1.0, the AUROC of (1 - confidence) for failures (Jaccard < 0.65) was 0.857 and its Spearman
correlation with Jaccard 0.693, against 0.573 / 0.244 for the mean certainty |2p - 1| over the lesion region
that it replaced; with the shipped model 0.4.0 they are 0.928 and 0.692.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional

import numpy as np

from .conventions import Route

__all__ = [
    "case_confidence",
    "MEASURES",
    "DEFAULT_MEASURE",
    "DEFAULT_THRESHOLD",
    "lesion_confidence",
    "flip_agreement",
    "jaccard",
    "route_for",
]

# From the threshold table of benchmarks/confidence_eval.py on the validation split with the shipped model 1.0.0
# served as the app serves it (README "Confidence"): the lowest threshold that catches 90% of the failures there.
# On the test split it sends 20% of cases to review and catches 71% of the failures. Re-pick it on the validation
# split with each model.
DEFAULT_THRESHOLD = 0.50
UNCERTAIN_BAND = (0.1, 0.9)


def lesion_confidence(probability: np.ndarray) -> float:
    """Confidence in [0, 1] of a segmentation, from its lesion probabilities ``(H, W)`` (see the module)."""
    p = np.asarray(probability, dtype=np.float32)
    if p.ndim != 2 or p.size == 0:
        return 0.0
    mask = p >= 0.5
    lesion_pixels = int(mask.sum())
    if lesion_pixels == 0:
        return 0.0  # no lesion found
    low, high = UNCERTAIN_BAND
    uncertain_pixels = int(np.count_nonzero((p > low) & (p < high)))
    uncertain_area = 1.0 - min(uncertain_pixels / lesion_pixels, 1.0)
    edges = np.concatenate([mask[0, :], mask[-1, :], mask[1:-1, 0], mask[1:-1, -1]])
    border_contact = float(edges.mean())
    return float(np.clip(uncertain_area * (1.0 - border_contact), 0.0, 1.0))


# The confidence measures the app can route by (DERMSEG_CONFIDENCE_MEASURE), each ``probability (H, W) -> [0, 1]``.
# A new measure is a function in its own module and one entry here; benchmarks/confidence_eval.py --measure NAME
# compares it with the others on the same images.
MEASURES: Dict[str, Callable[[np.ndarray], float]] = {"lesion": lesion_confidence}
DEFAULT_MEASURE = "lesion"


def case_confidence(probability: np.ndarray, flip_agreement: Optional[float] = None, measure: str = DEFAULT_MEASURE) -> float:
    """The app's confidence: the ``measure`` (:data:`MEASURES`), times the flip agreement where test-time flips ran."""
    if measure not in MEASURES:
        raise ValueError(f"confidence measure {measure!r} must be one of {', '.join(MEASURES)}")
    confidence = MEASURES[measure](probability)
    if flip_agreement is not None:
        confidence *= float(np.clip(flip_agreement, 0.0, 1.0))
    return confidence


def jaccard(mask: np.ndarray, truth: np.ndarray) -> float:
    """Jaccard (intersection over union) of two masks of the same image; 1 where both are empty.  The score the
    edge's install gate and the benchmarks give a segmentation against a reference mask."""
    a, b = np.asarray(mask) > 0, np.asarray(truth) > 0
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def flip_agreement(mask: np.ndarray, flipped_back_mask: np.ndarray) -> float:
    """Dice of two masks of the same image (one from a flipped input, flipped back); 1 where both are empty."""
    a = np.asarray(mask) > 0
    b = np.asarray(flipped_back_mask) > 0
    total = int(a.sum()) + int(b.sum())
    if total == 0:
        return 1.0
    return float(2.0 * np.logical_and(a, b).sum() / total)


def route_for(confidence: float, threshold: float) -> Route:
    """``accepted`` at or above the threshold, ``review`` below it."""
    return Route.ACCEPTED if confidence >= threshold else Route.REVIEW
