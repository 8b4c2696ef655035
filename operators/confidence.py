# Copyright (c) the dermseg contributors. Apache-2.0.
"""How sure the model is of one segmentation, from its probability map alone (plain numpy, no SDK).

Kept free of the SDK so ``benchmarks/confidence_eval.py`` computes exactly what the app computes.

The score is the mean certainty ``|2p - 1|`` over the *lesion region*: the pixels the model gives at least
``floor`` probability of being lesion.  Background far from the lesion is excluded because it is almost always
confidently background and would drown the signal: what goes wrong in a failed segmentation is a wide,
washed-out zone around or inside the lesion (probabilities near 0.5), or no lesion found at all (a dermoscopy
image always shows one), which scores 0.  A sharp, well-separated lesion scores near 1.
Optionally the agreement (Dice) of the mask with the mask of the horizontally flipped image multiplies in.
"""

from __future__ import annotations

import os
from typing import Optional

import numpy as np

__all__ = [
    "case_confidence",
    "DEFAULT_THRESHOLD",
    "THRESHOLD_ENV",
    "lesion_confidence",
    "flip_agreement",
    "route_for",
    "threshold_from_env",
    "ACCEPTED",
    "REVIEW",
]

THRESHOLD_ENV = "DERMSEG_CONFIDENCE_THRESHOLD"
# Provisional until benchmarks/confidence_eval.py has run on the trained model; see the README.
DEFAULT_THRESHOLD = 0.8
ACCEPTED = "accepted"
REVIEW = "review"


def lesion_confidence(probability: np.ndarray, floor: float = 0.05) -> float:
    """Confidence in [0, 1] of a segmentation, from its lesion probabilities ``(H, W)``."""
    p = np.asarray(probability, dtype=np.float32)
    if p.size == 0:
        return 0.0
    region = p >= floor
    if not region.any() or not (p >= 0.5).any():
        return 0.0  # no lesion found
    certainty = np.abs(2.0 * p[region] - 1.0)
    return float(np.clip(certainty.mean(), 0.0, 1.0))


def case_confidence(probability: np.ndarray, flip_agreement: Optional[float] = None) -> float:
    """The app's confidence: :func:`lesion_confidence`, times the flip agreement where test-time flips ran."""
    confidence = lesion_confidence(probability)
    if flip_agreement is not None:
        confidence *= float(np.clip(flip_agreement, 0.0, 1.0))
    return confidence


def flip_agreement(mask: np.ndarray, flipped_back_mask: np.ndarray) -> float:
    """Dice of two masks of the same image (one from a flipped input, flipped back); 1 where both are empty."""
    a = np.asarray(mask) > 0
    b = np.asarray(flipped_back_mask) > 0
    total = int(a.sum()) + int(b.sum())
    if total == 0:
        return 1.0
    return float(2.0 * np.logical_and(a, b).sum() / total)


def route_for(confidence: float, threshold: float) -> str:
    """``accepted`` at or above the threshold, ``review`` below it."""
    return ACCEPTED if confidence >= threshold else REVIEW


def threshold_from_env(environ: Optional[dict] = None) -> float:
    """The routing threshold from ``DERMSEG_CONFIDENCE_THRESHOLD``; a value outside [0, 1] is a ValueError."""
    environ = os.environ if environ is None else environ
    raw = environ.get(THRESHOLD_ENV, "").strip()
    if not raw:
        return DEFAULT_THRESHOLD
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{THRESHOLD_ENV}={raw!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{THRESHOLD_ENV}={raw!r} must be between 0 and 1")
    return value
