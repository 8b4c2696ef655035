# Copyright (c) the dermseg contributors. Apache-2.0.
"""The names and formats of the files the bundle's handlers write and its report reads back: the training log
and the predicted masks."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any, Dict, List

__all__ = ["read_training_log", "segmentation_filename"]


def read_training_log(filepath: str) -> List[Dict[str, Any]]:
    """Rows of a ``train_log.csv`` with numbers parsed; empty when the file does not exist."""
    if not os.path.isfile(filepath):
        return []
    with open(filepath, newline="") as f:
        rows = [{k: (float(v) if v not in ("", None) else math.nan) for k, v in r.items()} for r in csv.DictReader(f)]
    for r in rows:
        r["epoch"] = int(r["epoch"])
    return rows


def segmentation_filename(image_path: str, suffix: str = "segmentation") -> str:
    """``.../ISIC_0000000.jpg`` -> ``ISIC_0000000_segmentation.png``, the name the ISIC scorer expects."""
    return f"{Path(str(image_path)).stem}_{suffix}.png"
