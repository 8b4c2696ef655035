# Copyright (c) the dermseg contributors. Apache-2.0.
"""How much does a model lose on photos from another dermoscope?  Mean Jaccard under simulated shifts.

    .venv/bin/python benchmarks/robustness.py [--model training_bundle/models ...] [--split validation]
        [--data ../shared/data/isic2018_task1_512] [--limit N] [--json OUT.json]

Each photo of the split (the 512-px copy by default, so the app's own down-sizing is part of the path) is
changed the way another site's images differ, then goes through the app's code
(``operators.segmentation.segment_cases``) and is scored against its mask at the photo's size:

- ``none``: the photo as it is;
- ``warm light`` and ``cool light``: a colour cast (per-channel gains), as another light or white balance gives;
- ``underexposed``: 70% of the brightness;
- ``vignette``: corners darkened to 40%, as a dermoscope's optics or a phone's lens do;
- ``defocus``: a Gaussian blur of 1% of the photo's width.

Several ``--model`` paths are measured in the same run, side by side.  Choices are made on the validation split
(the default); the test split is for the final report only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Dict

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from confidence_eval import FAILURE_JACCARD  # noqa: E402  (this folder: the same failure cut-off)

from networks.preprocessing import read_mask, read_rgb  # noqa: E402
from operators.case import Case  # noqa: E402
from operators.confidence import jaccard  # noqa: E402
from operators.model import PRECISIONS, load_model  # noqa: E402
from operators.segmentation import segment_cases  # noqa: E402


def _gains(*gains: float) -> Callable[[np.ndarray], np.ndarray]:
    return lambda rgb: rgb * np.asarray(gains, dtype=np.float32)


def _vignette(rgb: np.ndarray) -> np.ndarray:
    h, w = rgb.shape[:2]
    y, x = np.ogrid[-1.0 : 1.0 : h * 1j, -1.0 : 1.0 : w * 1j]
    return rgb * np.clip(1.0 - 0.6 * (x * x + y * y) / 2.0, 0.0, 1.0)[..., None].astype(np.float32)


def _defocus(rgb: np.ndarray) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    sigma = 0.01 * rgb.shape[1]
    return gaussian_filter(rgb, sigma=(sigma, sigma, 0))


SHIFTS: Dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "none": lambda rgb: rgb,
    "warm light": _gains(1.15, 1.0, 0.8),
    "cool light": _gains(0.85, 1.0, 1.15),
    "underexposed": _gains(0.7, 0.7, 0.7),
    "vignette": _vignette,
    "defocus": _defocus,
}


def shifted(rgb: np.ndarray, shift: str) -> np.ndarray:
    """``rgb`` (uint8) changed by the named shift, back in uint8."""
    return np.clip(SHIFTS[shift](rgb.astype(np.float32)) + 0.5, 0, 255).astype(np.uint8)


def evaluate(
    model_path: Path, items: list, data: Path, batch_size: int = 8, precision: str = "int8"
) -> Dict[str, np.ndarray]:
    """Per-image Jaccard of the model at ``model_path`` (the export ``precision`` picks from a folder, as the app's
    ``DERMSEG_MODEL_PRECISION``) under every shift: ``{shift: (n,) array}``."""
    model, info = load_model(model_path, precision=precision)
    scores: Dict[str, list] = {shift: [] for shift in SHIFTS}
    for first in range(0, len(items), batch_size):
        chunk = items[first : first + batch_size]
        photos = [read_rgb(data / item["image"]) for item in chunk]
        truths = [read_mask(data / item["label"]) for item in chunk]
        for shift in SHIFTS:
            cases = [Case(source_file=item["image"], rgb=shifted(rgb, shift)) for item, rgb in zip(chunk, photos)]
            segment_cases(cases, model, info, torch.device("cpu"), batch_size)
            for case, truth in zip(cases, truths):
                if not case.ok:
                    raise RuntimeError(f"{case.source_file}: {case.error}")
                scores[shift].append(jaccard(case.mask, truth))
        print(f"  {model_path}: {first + len(chunk)}/{len(items)} images", file=sys.stderr, flush=True)
    return {shift: np.asarray(values) for shift, values in scores.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, action="append", help="model file or folder; repeat to compare")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "isic2018_task1_512")
    parser.add_argument("--datalist", type=Path, default=REPO / "training_bundle" / "configs" / "datalist.json")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--limit", type=int, default=None, help="first N images of the split only")
    parser.add_argument("--json", type=Path, default=None, help="write the per-image Jaccards here")
    parser.add_argument("--precision", choices=PRECISIONS, default="int8",
                        help="which export of a model folder, as the app's DERMSEG_MODEL_PRECISION (default int8)")
    args = parser.parse_args(argv)
    models = args.model or [REPO / "training_bundle" / "models"]
    if not args.data.is_dir():
        print(f"SKIP: no data at {args.data} (the ISIC 2018 copy beside the repository)")
        return 0
    items = json.loads(args.datalist.read_text())[args.split][: args.limit or None]

    results = {str(path): evaluate(path, items, args.data, precision=args.precision) for path in models}
    print(f"\n{args.split} split of {args.data}, {len(items)} photos: mean Jaccard (share of failures, Jaccard < "
          f"{FAILURE_JACCARD})")
    print(f"{'shift':<14}" + "".join(f"{str(path)[-34:]:>36}" for path in models))
    for shift in SHIFTS:
        cells = [f"{r[shift].mean():.4f} ({(r[shift] < FAILURE_JACCARD).mean():5.1%})" for r in results.values()]
        print(f"{shift:<14}" + "".join(f"{c:>36}" for c in cells))
    worst = [min(r[s].mean() for s in SHIFTS) for r in results.values()]
    print(f"{'worst shift':<14}" + "".join(f"{w:>36.4f}" for w in worst))
    if args.json:
        args.json.write_text(json.dumps({m: {s: v.tolist() for s, v in r.items()} for m, r in results.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
