# Copyright (c) the dermseg contributors. Apache-2.0.
"""The evaluation report: ``report.md`` with the test scores, training curves (loss and accuracy per epoch, as
the paper's Fig. 6) and a grid of example overlays (as its Fig. 9)."""

from __future__ import annotations

import math
import os
from typing import Any, List, Mapping, Optional, Sequence

import numpy as np

from networks.preprocessing import read_mask, read_rgb

from .outputs import read_training_log, segmentation_filename

__all__ = ["write_report", "plot_training_curves", "plot_examples"]

_SUMMARY_ORDER = [
    ("mean_jaccard", "Jaccard (mean per image)"),
    ("pooled_jaccard", "Jaccard (pooled over all pixels)"),
    ("mean_thresholded_jaccard", "ISIC thresholded Jaccard (J < 0.65 scores 0)"),
    ("mean_dice", "Dice (mean per image)"),
    ("pooled_dice", "Dice (pooled)"),
    ("mean_accuracy", "Pixel accuracy (mean per image)"),
    ("mean_sensitivity", "Sensitivity (mean per image)"),
    ("mean_specificity", "Specificity (mean per image)"),
]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def plot_training_curves(train_log: str, filepath: str) -> bool:
    """Loss and accuracy per epoch from ``train_log.csv``; False when there is no log to plot."""
    rows = read_training_log(train_log)
    if not rows:
        return False
    plt = _pyplot()
    epochs = [r["epoch"] for r in rows]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax_loss.plot(epochs, [r.get("train_loss", math.nan) for r in rows], marker=".", label="training loss")
    ax_loss.set_xlabel("epoch"), ax_loss.set_ylabel("loss"), ax_loss.set_title("Loss")
    for key, label in (("train_accuracy", "training accuracy"), ("val_accuracy", "validation accuracy"), ("val_mean_jaccard", "validation Jaccard")):
        if key in rows[0]:
            ax_acc.plot(epochs, [r.get(key, math.nan) for r in rows], marker=".", label=label)
    ax_acc.set_xlabel("epoch"), ax_acc.set_title("Accuracy and Jaccard")
    from matplotlib.ticker import MaxNLocator

    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(filepath, dpi=120)
    plt.close(fig)
    return True


def _examples(rows: Sequence[Mapping[str, Any]], n: int) -> List[Mapping[str, Any]]:
    """``n`` rows spread from the best to the worst Jaccard, so the grid shows successes and failures."""
    ranked = sorted(rows, key=lambda r: -r["jaccard"])
    if len(ranked) <= n:
        return ranked
    return [ranked[i] for i in np.linspace(0, len(ranked) - 1, n).round().astype(int)]


def plot_examples(rows: Sequence[Mapping[str, Any]], predictions_dir: str, filepath: str, n: int = 6) -> bool:
    """Grid of image | ground truth outline (green) and prediction outline (red) | the two masks compared."""
    chosen = [r for r in _examples(rows, n) if os.path.isfile(os.path.join(predictions_dir, segmentation_filename(r["image_path"])))]
    if not chosen:
        return False
    from scipy import ndimage

    plt = _pyplot()
    fig, axes = plt.subplots(len(chosen), 3, figsize=(9, 3 * len(chosen)), squeeze=False)
    for ax_row, r in zip(axes, chosen):
        image = read_rgb(r["image_path"])
        pred = read_mask(os.path.join(predictions_dir, segmentation_filename(r["image_path"]))).astype(bool)
        truth = read_mask(r["label_path"]).astype(bool) if r.get("label_path") else None
        if truth is not None and truth.shape != pred.shape:
            truth = None
        overlay = image.copy()
        if truth is not None:
            overlay[truth ^ ndimage.binary_erosion(truth, iterations=max(1, min(pred.shape) // 128))] = (0, 255, 0)
        overlay[pred ^ ndimage.binary_erosion(pred, iterations=max(1, min(pred.shape) // 128))] = (255, 0, 0)
        compare = np.zeros(pred.shape + (3,), np.uint8)
        compare[pred] = (255, 0, 0)
        if truth is not None:
            compare[truth & ~pred] = (0, 255, 0)
            compare[truth & pred] = (255, 255, 0)
        for ax, img, title in zip(ax_row, (image, overlay, compare), (r["image"], f"J = {r['jaccard']:.3f}", "TP yellow, FP red, FN green")):
            ax.imshow(img)
            ax.set_title(title, fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(filepath, dpi=100)
    plt.close(fig)
    return True


def write_report(
    output_dir: str,
    rows: Sequence[Mapping[str, Any]],
    summary: Mapping[str, float],
    predictions_dir: Optional[str] = None,
    train_log: Optional[str] = None,
    extra_info: Optional[Mapping[str, Any]] = None,
) -> str:
    """Write ``report.md`` (+ ``training_curves.png``, ``examples.png``) into ``output_dir``; return its path."""
    lines = ["# Test-set evaluation", ""]
    for key, value in (extra_info or {}).items():
        lines.append(f"- {key}: `{value}`")
    lines += ["", f"{int(summary['num_images'])} images, scored at each image's original size.", "", "| metric | value |", "|---|---|"]
    lines += [f"| {label} | {summary[key]:.4f} |" for key, label in _SUMMARY_ORDER if key in summary]
    if train_log and plot_training_curves(train_log, os.path.join(output_dir, "training_curves.png")):
        lines += ["", "## Training curves", "", f"From `{train_log}`.", "", "![training curves](training_curves.png)"]
    else:
        lines += ["", "No training log found: no training curves."]
    if predictions_dir and plot_examples(rows, predictions_dir, os.path.join(output_dir, "examples.png")):
        lines += ["", "## Examples", "", "From the best to the worst Jaccard. Outlines: ground truth green, prediction red.", "", "![examples](examples.png)"]
    worst = sorted(rows, key=lambda r: r["jaccard"])[:5]
    lines += ["", "## Lowest Jaccard", "", "| image | Jaccard | Dice |", "|---|---|---|"]
    lines += [f"| {r['image']} | {r['jaccard']:.4f} | {r['dice']:.4f} |" for r in worst]
    path = os.path.join(output_dir, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path
