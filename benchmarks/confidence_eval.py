# Copyright (c) the dermseg contributors. Apache-2.0.
"""Does the app's confidence find its failures?  AUROC, Spearman and a threshold table on the test split.

    .venv/bin/python benchmarks/confidence_eval.py [--model training_bundle/models]
        [--data ../shared/data/isic2018_task1_512] [--limit N] [--tta] [--json OUT.json]

Each test image goes through the app's own code: ``operators.segmentation.segment_cases`` (the shared
preprocessing, the TorchScript model, probabilities at the image's size) and
``operators.confidence.lesion_confidence``.  A failure is an image whose Jaccard with the ground truth is below
0.65 (the ISIC challenge's cut-off).  Reported: the AUROC of (1 - confidence) for finding failures, the Spearman
correlation of confidence with Jaccard, and for each threshold the share of cases sent to review and the share of
failures caught.  Without a trained model (``--random-model``, or when the model file is missing) it runs on a
random one so the script itself is exercised; those numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from networks.preprocessing import read_mask, read_rgb  # noqa: E402
from operators.case import Case  # noqa: E402
from operators.confidence import DEFAULT_MEASURE, MEASURES, case_confidence, jaccard  # noqa: E402
from operators.model import load_model, resolve_model_file  # noqa: E402
from operators.segmentation import segment_cases  # noqa: E402

FAILURE_JACCARD = 0.65
THRESHOLDS = [round(t, 2) for t in np.arange(0.20, 0.96, 0.05)]


def auroc(scores: np.ndarray, positives: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for ``positives`` (Mann-Whitney U, ties counted half)."""
    from scipy.stats import rankdata

    positives = positives.astype(bool)
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def threshold_table(confidence: np.ndarray, jaccards: np.ndarray) -> list:
    failures = jaccards < FAILURE_JACCARD
    rows = []
    for threshold in THRESHOLDS:
        review = confidence < threshold
        rows.append({
            "threshold": threshold,
            "review_share": float(review.mean()),
            "failures_caught": float(review[failures].mean()) if failures.any() else float("nan"),
            "accepted_mean_jaccard": float(jaccards[~review].mean()) if (~review).any() else float("nan"),
        })
    return rows


def _has_model(path: Path) -> bool:
    try:
        resolve_model_file(path)
    except (FileNotFoundError, ValueError):
        return False
    return True


def random_model(folder: Path) -> Path:
    from networks import RIBCUNet

    torch.manual_seed(0)
    path = folder / "random.ts"
    scripted = torch.jit.script(RIBCUNet(channels=(4, 8, 16, 32, 64)).eval())
    torch.jit.save(scripted, str(path), _extra_files={"metadata.json": json.dumps({"name": "random", "version": "0"})})
    return path


def evaluate(model_path: Path, data: Path, datalist: Path, split: str, limit: int | None, tta: bool, batch_size: int,
             measure: str = DEFAULT_MEASURE):
    model, info = load_model(model_path)  # as the app loads it: ONNX Runtime on the CPU where there is model.onnx
    items = json.loads(datalist.read_text())[split][: limit or None]
    records = []
    start = time.perf_counter()
    for first in range(0, len(items), batch_size):
        chunk = items[first : first + batch_size]
        cases = [Case(source_file=item["image"], rgb=read_rgb(data / item["image"])) for item in chunk]
        segment_cases(cases, model, info, torch.device("cpu"), batch_size, flip_tta=tta)
        for case, item in zip(cases, chunk):
            if not case.ok:
                print(f"  {case.error}", file=sys.stderr)
                continue
            truth = read_mask(data / item["label"])
            record = {
                "image": item["image"],
                "jaccard": jaccard(case.mask, truth),
                # what the app computes; with --tta the mask and probability are the two views' mean, as the app's
                "confidence": case_confidence(case.probability, measure=measure),
            }
            if tta:  # what the app computes with DERMSEG_FLIP_TTA=1
                record["confidence_tta"] = case_confidence(case.probability, case.flip_agreement, measure)
                record["flip_agreement"] = case.flip_agreement
            records.append(record)
        print(f"  {len(records)}/{len(items)} images, {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return info, records


def summarise(records: list, key: str) -> dict:
    from scipy.stats import spearmanr

    confidence = np.array([r[key] for r in records])
    jaccards = np.array([r["jaccard"] for r in records])
    failures = jaccards < FAILURE_JACCARD
    rho = spearmanr(confidence, jaccards).statistic if len(records) > 2 else float("nan")
    return {
        "confidence": key,
        "n": len(records),
        "mean_jaccard": float(jaccards.mean()),
        "failures": int(failures.sum()),
        "auroc_failure": auroc(1.0 - confidence, failures),
        "spearman_confidence_jaccard": float(rho),
        "thresholds": threshold_table(confidence, jaccards),
    }


def print_summary(summary: dict) -> None:
    print(f"\nconfidence = {summary['confidence']}: {summary['n']} images, mean Jaccard {summary['mean_jaccard']:.3f}, "
          f"{summary['failures']} failures (Jaccard < {FAILURE_JACCARD})")
    print(f"  AUROC of (1 - confidence) for failures: {summary['auroc_failure']:.3f}")
    print(f"  Spearman(confidence, Jaccard):          {summary['spearman_confidence_jaccard']:.3f}")
    print("  threshold  review share  failures caught  accepted mean Jaccard")
    for row in summary["thresholds"]:
        print(f"  {row['threshold']:9.2f}  {row['review_share']:12.1%}  {row['failures_caught']:15.1%}  "
              f"{row['accepted_mean_jaccard']:21.3f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=REPO / "training_bundle" / "models", help="model file or folder")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "isic2018_task1_512")
    parser.add_argument("--datalist", type=Path, default=REPO / "training_bundle" / "configs" / "datalist.json")
    parser.add_argument("--split", default="testing")
    parser.add_argument("--limit", type=int, default=None, help="first N images of the split only")
    parser.add_argument("--tta", action="store_true",
                        help="as the app with DERMSEG_FLIP_TTA=1: the mirror image averaged in, flip agreement scored")
    parser.add_argument("--measure", choices=sorted(MEASURES), default=DEFAULT_MEASURE,
                        help="the confidence measure (DERMSEG_CONFIDENCE_MEASURE)")
    parser.add_argument("--random-model", action="store_true", help="a random model (exercises the script only)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--json", type=Path, default=None, help="write the per-image records and summaries here")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as scratch:
        model_path = args.model
        if args.random_model or not _has_model(model_path):
            print(f"NOTE: no trained model at {model_path} (or --random-model): a RANDOM model, numbers mean nothing;"
                  " only 16 images.")
            model_path = random_model(Path(scratch))
            args.limit = min(args.limit or 16, 16)
        info, records = evaluate(model_path, args.data, args.datalist, args.split, args.limit, args.tta, args.batch_size,
                                 args.measure)
    print(f"model {info.name} {info.version}, split {args.split} of {args.data}")
    summaries = [summarise(records, "confidence")] + ([summarise(records, "confidence_tta")] if args.tta else [])
    for summary in summaries:
        print_summary(summary)
    if args.json:
        args.json.write_text(json.dumps({"model": info.__dict__, "summaries": summaries, "records": records}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
