# Copyright (c) the dermseg contributors. Apache-2.0.
"""Write the bundle's seeded 7:1:2 train/validation/test split of an ISIC 2018 Task 1 folder as a datalist JSON.

The split is made once and shipped (``configs/datalist.json``) so that every config, variant and rerun is scored
on the same 520 test images.  It depends only on the sorted image IDs and the seed, never on the file system's
listing order, so rerunning it reproduces the shipped file byte for byte::

    python training_bundle/scripts/make_datalist.py ../shared/data/isic2018_task1_256 training_bundle/configs/datalist.json

Paths are written relative to the dataset folder (the configs join them with ``dataset_dir``), so one datalist
serves the 256 px copy, the 512 px copy and the official full-size download alike.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

IMAGE_DIR = "ISIC2018_Task1-2_Training_Input"
LABEL_DIR = "ISIC2018_Task1_Training_GroundTruth"
DEFAULT_SEED = 2018
DEFAULT_FRACTIONS = (0.7, 0.1, 0.2)

__all__ = ["IMAGE_DIR", "LABEL_DIR", "find_cases", "split_cases", "make_datalist", "dumps_datalist"]


def find_cases(dataset_dir: str | os.PathLike) -> List[str]:
    """Sorted ISIC IDs (``ISIC_0000000``) that have both an image and a ground-truth mask."""
    root = Path(dataset_dir)
    images = {p.stem for p in (root / IMAGE_DIR).glob("ISIC_*.jpg")}
    labels = {p.name[: -len("_segmentation.png")] for p in (root / LABEL_DIR).glob("ISIC_*_segmentation.png")}
    missing = sorted(images ^ labels)
    if missing:
        raise FileNotFoundError(f"{len(missing)} cases lack an image or a mask, e.g. {missing[:3]}")
    if not images:
        raise FileNotFoundError(f"no ISIC_*.jpg under {root / IMAGE_DIR}")
    return sorted(images)


def split_cases(
    case_ids: Sequence[str], seed: int = DEFAULT_SEED, fractions: Sequence[float] = DEFAULT_FRACTIONS
) -> Dict[str, List[str]]:
    """Shuffle with ``seed`` and cut into training/validation/testing.

    Training and validation sizes are rounded down and testing takes the rest: 2,594 cases give 1815/259/520,
    the paper's split sizes.
    """
    if len(fractions) != 3 or not math.isclose(sum(fractions), 1.0):
        raise ValueError(f"expected three fractions summing to 1, got {fractions}")
    ids = sorted(case_ids)
    order = np.random.default_rng(seed).permutation(len(ids))
    n_train = int(math.floor(fractions[0] * len(ids)))
    n_val = int(math.floor(fractions[1] * len(ids)))
    shuffled = [ids[i] for i in order]
    return {
        "training": sorted(shuffled[:n_train]),
        "validation": sorted(shuffled[n_train : n_train + n_val]),
        "testing": sorted(shuffled[n_train + n_val :]),
    }


def _entry(case_id: str) -> Dict[str, str]:
    return {"image": f"{IMAGE_DIR}/{case_id}.jpg", "label": f"{LABEL_DIR}/{case_id}_segmentation.png"}


def make_datalist(
    dataset_dir: str | os.PathLike, seed: int = DEFAULT_SEED, fractions: Sequence[float] = DEFAULT_FRACTIONS
) -> Dict[str, object]:
    """The datalist dict: provenance fields plus ``training``/``validation``/``testing`` lists of image/label."""
    split = split_cases(find_cases(dataset_dir), seed=seed, fractions=fractions)
    datalist: Dict[str, object] = {
        "description": "ISIC 2018 Task 1 training set, seeded random 7:1:2 split (scripts/make_datalist.py)",
        "seed": seed,
        "fractions": list(fractions),
        "numTraining": len(split["training"]),
        "numValidation": len(split["validation"]),
        "numTest": len(split["testing"]),
    }
    for key, ids in split.items():
        datalist[key] = [_entry(i) for i in ids]
    return datalist


def dumps_datalist(datalist: Dict[str, object]) -> str:
    """JSON text with one case per line: small, diff-friendly, still plain JSON."""
    lines = ["{"]
    items = list(datalist.items())
    for n, (key, value) in enumerate(items):
        comma = "," if n < len(items) - 1 else ""
        if isinstance(value, list) and value and isinstance(value[0], dict):
            cases = ",\n".join(f"  {json.dumps(v)}" for v in value)
            lines.append(f"{json.dumps(key)}: [\n{cases}\n ]{comma}")
        else:
            lines.append(f"{json.dumps(key)}: {json.dumps(value)}{comma}")
    return "\n ".join(lines[:1] + lines[1:]).replace("{\n ", "{\n ", 1) + "\n}\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset_dir", help="folder in the official ISIC 2018 Task 1 layout")
    parser.add_argument("output", help="datalist JSON to write")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--fractions", type=float, nargs=3, default=DEFAULT_FRACTIONS, metavar=("TRAIN", "VAL", "TEST"))
    args = parser.parse_args(argv)
    datalist = make_datalist(args.dataset_dir, seed=args.seed, fractions=args.fractions)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    with open(args.output, "w") as f:
        f.write(dumps_datalist(datalist))
    print(f"wrote {args.output}: {datalist['numTraining']}/{datalist['numValidation']}/{datalist['numTest']}")


if __name__ == "__main__":
    main()
