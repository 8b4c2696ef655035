# Copyright (c) the dermseg contributors. Apache-2.0.
"""The install gate: a new model version goes live only if it is not worse than the active one on this site.

The cloud scores a new version on ISIC; what matters at the edge is this site's images.  The corrected cases are
the site's own labelled set: images the model saw and masks a reviewer drew.  The gate runs the new version and the
one the app runs now over them exactly as the app does (``operators.model.load_model``, the precision the app is
set to, ``operators.segmentation.segment_cases``), scores each by mean Jaccard against the reviewers' masks, and
installs the new one only if its score is at least the active one's minus ``margin``.  A case a model fails on
scores 0.  Both scores are recorded (``model_scores``), and ``status`` shows the active version's latest.

The comparison is the model the app runs now: the store's active version, else the training bundle's export (the
app's default).  A store with no corrected case gives the gate nothing to score on: it refuses, and says so (an
unchecked install is ``install-model`` without ``--gate``).  The corrected cases are review cases, the hard ones,
so the scores sit below a test set's; the comparison between the two models is what counts.
"""

from __future__ import annotations

from typing import List, Tuple

import numpy as np

from operators.confidence import jaccard

from .model_registry import model_exports, read_name_and_version
from .schema import CaseState, EdgeStoreError
from .store import EdgeStore

__all__ = ["mean_jaccard", "score_model", "install_gated"]


def mean_jaccard(masks: List, truths: List[np.ndarray]) -> float:
    """Mean per-image Jaccard; a missing mask (the model failed on the case) scores 0."""
    return float(np.mean([0.0 if mask is None else jaccard(mask, truth) for mask, truth in zip(masks, truths)]))


def score_model(model_path, images: List[np.ndarray], truths: List[np.ndarray],
                precision: str = "int8") -> Tuple[float, str]:
    """The model's mean Jaccard on ``images`` against ``truths``, run as the app runs it (on the CPU), and the
    version the model states."""
    import torch

    from operators.case import Case
    from operators.model import load_model
    from operators.segmentation import segment_cases

    device = torch.device("cpu")
    model, info = load_model(model_path, device, precision=precision)
    cases = [Case(source_file=str(index), rgb=image) for index, image in enumerate(images)]
    segment_cases(cases, model, info, device)
    return mean_jaccard([case.mask if case.ok else None for case in cases], truths), info.version


def _corrected_set(store: EdgeStore) -> Tuple[List[np.ndarray], List[np.ndarray]]:
    from networks.preprocessing import read_mask, read_rgb

    cases = store.cases((CaseState.CORRECTED,))
    return [read_rgb(case.files["image"]) for case in cases], [read_mask(case.files["corrected_mask"]) for case in cases]


def install_gated(store: EdgeStore, path, margin: float = 0.02, precision: str = "int8") -> Tuple[dict, bool]:
    """Score the model at ``path`` and the one the app runs now on the corrected cases; install the new one if
    it loses at most ``margin`` mean Jaccard.  Returns (the scores as printed, installed?).

    EdgeStoreError (nothing installed) for a bad model, a bad margin, or no corrected case to score on.
    """
    from ..settings import DEFAULT_MODEL_PATH

    if not 0.0 <= margin <= 1.0:
        raise EdgeStoreError(f"--margin {margin} must be between 0 and 1 (mean Jaccard)")
    _, new_version = read_name_and_version(*model_exports(path))
    images, truths = _corrected_set(store)
    if not images:
        raise EdgeStoreError(
            "the gate has nothing to score on: no corrected case in this store yet (import the reviewers' "
            "corrections first, or install without --gate)"
        )
    # the model the app runs now: the active version, else the bundle's export (whose version it states)
    active_path = store.active_model_path() or DEFAULT_MODEL_PATH
    new_score, _ = score_model(path, images, truths, precision)
    active_score, active_version = score_model(active_path, images, truths, precision)
    active_version = store.active_model_version() or active_version
    passed = new_score >= active_score - margin
    store.models.record_scores({new_version: new_score, active_version: active_score}, len(images))
    verdict = (
        f"model {new_version} passes: mean Jaccard {new_score:.4f} against {active_score:.4f} for {active_version}"
        if passed else
        f"model {new_version} refused: mean Jaccard {new_score:.4f} is more than {margin} below {active_version}'s "
        f"{active_score:.4f} on {len(images)} corrected case(s); nothing installed"
    )
    scores = {
        "cases": len(images),
        "margin": margin,
        "new": {"version": new_version, "mean_jaccard": round(new_score, 4)},
        "active": {"version": active_version, "mean_jaccard": round(active_score, 4)},
        "installed": passed,
        "verdict": verdict,
    }
    if passed:
        store.install_model(path)
    return scores, passed

