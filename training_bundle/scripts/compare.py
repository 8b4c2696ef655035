# Copyright (c) the dermseg contributors. Apache-2.0.
"""Train and/or evaluate the paper's ablations and MONAI's peer networks with the same recipe on the same split,
and print the comparison table in the paper's form (pixel accuracy, Jaccard) plus parameters, GFLOPs, CPU latency
and the paper's own figures.

    # metrics only (variants already trained and evaluated into WORK_DIR/<variant>/eval/metrics.json):
    python training_bundle/scripts/compare.py --work_dir runs/compare
    # train (resumable) + evaluate every variant, then the table:
    python training_bundle/scripts/compare.py --work_dir runs/compare --train --evaluate
    # the same with the modern recipe (configs/train_recipe.json) layered over the paper's:
    python training_bundle/scripts/compare.py --work_dir runs/compare_recipe --recipe --train --evaluate

Each variant is the bundle's own configs plus overrides: the ablations flip ``residual_inception`` and
``bi_convgru``; the MONAI peers append ``configs/net_monai_*.json`` (which replace ``network_def``) to
``train.json`` for training and to ``train.json`` + ``evaluate.json`` for evaluation.  ``--recipe`` puts
``train_recipe.json`` after ``train.json`` in both, with its colour constancy turned off: that layer belongs to
RIBCUNet alone, and every network must see the same inputs.  A variant's
checkpoints go to ``WORK_DIR/<variant>/models`` and its evaluation to ``WORK_DIR/<variant>/eval``, so runs are
independent and each one resumes on its own.  Every ``--override KEY=VALUE`` goes to all of them (data folder,
epochs, widths ...).  GFLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` for one image at the
configured size (2 FLOPs per multiply-add); the CPU latency is the median time of one image through the frozen
TorchScript network on this machine's CPU (all its threads), so rows are comparable only within one run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from typing import Any, Dict, List, Sequence

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from scripts._config import (  # noqa: E402
    EVALUATE_CONFIG,
    INFERENCE_CONFIGS,
    RECIPE_CONFIG,
    TRAIN_CONFIG,
    load_config,
    parse_overrides,
)

__all__ = ["VARIANTS", "PAPER", "count_cost", "cpu_latency_ms", "run_variant", "collect", "format_table"]

# name -> (label in the table, extra config files, overrides)
VARIANTS: Dict[str, tuple] = {
    "unet": ("U-Net (RIBCUNet, both switches off)", [], {"residual_inception": False, "bi_convgru": False}),
    "unet_ri": ("U-Net + residual Inception", [], {"residual_inception": True, "bi_convgru": False}),
    "unet_bcgru": ("U-Net + bidirectional ConvGRU", [], {"residual_inception": False, "bi_convgru": True}),
    "ribcunet": ("RIBCUNet (both, the paper's model)", [], {"residual_inception": True, "bi_convgru": True}),
    "monai_unet": ("MONAI UNet", ["configs/net_monai_unet.json"], {}),
    "monai_basic_unet": ("MONAI BasicUNet", ["configs/net_monai_basic_unet.json"], {}),
    "monai_attention_unet": ("MONAI AttentionUnet", ["configs/net_monai_attention_unet.json"], {}),
}


# The paper's own figures on its own 7:1:2 split (pixel accuracy, Jaccard; width 64, 60 epochs). Its Fig. 8 shows
# the ablations as a bar chart without numbers; MONAI's networks are not in the paper.
PAPER: Dict[str, str] = {
    "unet": "Fig. 8 (chart only)",
    "unet_ri": "Fig. 8 (chart only)",
    "unet_bcgru": "Fig. 8 (chart only)",
    "ribcunet": "0.934 / 0.831",
}
PAPER_OTHERS = "The paper's Table 1 also lists R2U-Net 0.929 / 0.827, Dense U-Net 0.921 / 0.822 and Res-UNet 0.919 / 0.818."


def _variant_overrides(work_dir: str, name: str, common: Dict[str, Any]) -> Dict[str, Any]:
    root = os.path.abspath(os.path.join(work_dir, name))
    return {**VARIANTS[name][2], **common, "ckpt_dir": os.path.join(root, "models"), "output_dir": os.path.join(root, "eval")}


def _inference_config(bundle_root: str, name: str, overrides: Dict[str, Any]):
    """The variant's inference config (its ``network_def``) and its ``image_size``."""
    parser = load_config(bundle_root, [*INFERENCE_CONFIGS, *VARIANTS[name][1]], {**VARIANTS[name][2], **overrides})
    return parser, [int(s) for s in parser.get_parsed_content("image_size")]


def count_cost(bundle_root: str, name: str, overrides: Dict[str, Any]) -> Dict[str, float]:
    """Parameters and forward GFLOPs of one image of the variant's network at ``image_size``."""
    from torch.utils.flop_counter import FlopCounterMode

    parser, size = _inference_config(bundle_root, name, overrides)
    # on the meta device: shapes only, so even the paper's width costs no time and no memory
    with torch.device("meta"):
        net = parser.get_parsed_content("network_def").eval()
        image = torch.zeros(1, 3, *size)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        net(image)
    return {"params_m": sum(p.numel() for p in net.parameters()) / 1e6, "gflops": counter.get_total_flops() / 1e9}


def cpu_latency_ms(bundle_root: str, name: str, overrides: Dict[str, Any], repeats: int = 5) -> float:
    """Median milliseconds of one image at ``image_size`` through the frozen TorchScript network on the CPU."""
    parser, size = _inference_config(bundle_root, name, overrides)
    torch.manual_seed(0)
    net = torch.jit.freeze(torch.jit.script(parser.get_parsed_content("network_def").cpu().eval()))
    image = torch.rand(1, 3, *size)
    times = []
    with torch.inference_mode():
        net(image)  # warm-up: TorchScript's profiling run, oneDNN primitive caches
        for _ in range(repeats):
            start = time.perf_counter()
            net(image)
            times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def run_variant(
    bundle_root: str,
    work_dir: str,
    name: str,
    common: Dict[str, Any],
    train: bool,
    evaluate: bool,
    recipe: bool = False,
) -> None:
    """Train (resuming if interrupted) and/or evaluate one variant through ``monai.bundle``'s ConfigWorkflow, with
    the paper's recipe or (``recipe``) the modern one layered over it."""
    from monai.bundle import ConfigWorkflow

    overrides = _variant_overrides(work_dir, name, common)
    layer = (RECIPE_CONFIG,) if recipe else ()
    steps = ([((TRAIN_CONFIG, *layer), "train")] if train else []) + (
        [((TRAIN_CONFIG, *layer, EVALUATE_CONFIG), "infer")] if evaluate else []
    )
    for configs, workflow_type in steps:
        workflow = ConfigWorkflow(
            config_file=[os.path.join(bundle_root, f) for f in (*configs, *VARIANTS[name][1])],
            meta_file=os.path.join(bundle_root, "configs", "metadata.json"),
            logging_file=os.path.join(bundle_root, "configs", "logging.conf"),
            workflow_type=workflow_type,
            bundle_root=bundle_root,
            **overrides,
        )
        workflow.initialize()
        workflow.run()
        workflow.finalize()


def collect(
    bundle_root: str, work_dir: str, names: Sequence[str], common: Dict[str, Any], latency_repeats: int = 5
) -> List[Dict[str, Any]]:
    """One row per variant: its test metrics (NaN when not evaluated yet), its cost and the paper's figures."""
    rows = []
    for name in names:
        row: Dict[str, Any] = {"variant": name, "label": VARIANTS[name][0]}
        path = os.path.join(work_dir, name, "eval", "metrics.json")
        report = json.load(open(path)) if os.path.isfile(path) else {}
        metrics = report.get("metrics", {})
        row["evaluated_image_size"] = report.get("image_size")
        for key in ("mean_accuracy", "mean_jaccard", "pooled_jaccard", "mean_thresholded_jaccard", "mean_dice", "num_images"):
            row[key] = metrics.get(key, math.nan)
        row.update(count_cost(bundle_root, name, common))
        row["cpu_ms"] = cpu_latency_ms(bundle_root, name, common, latency_repeats) if latency_repeats > 0 else math.nan
        row["paper"] = PAPER.get(name, "not in the paper")
        rows.append(row)
    return rows


def format_table(rows: Sequence[Dict[str, Any]], image_size: Sequence[int]) -> str:
    """Markdown table in the paper's form, then the extra columns."""
    size = "x".join(str(s) for s in image_size)
    head = (
        f"| Method | Accuracy | Jaccard | Jaccard (pooled) | Thresholded Jaccard | Dice | Params (M) | GFLOPs ({size}) "
        f"| CPU ms ({size}, batch 1) | Paper: accuracy / Jaccard |"
    )
    lines = [head, "|---|---|---|---|---|---|---|---|---|---|"]

    def f(v: float) -> str:
        return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"

    for r in rows:
        lines.append(
            f"| {r['label']} | {f(r['mean_accuracy'])} | {f(r['mean_jaccard'])} | {f(r['pooled_jaccard'])} | "
            f"{f(r['mean_thresholded_jaccard'])} | {f(r['mean_dice'])} | {r['params_m']:.2f} | {r['gflops']:.2f} | "
            f"{'n/a' if math.isnan(r['cpu_ms']) else format(r['cpu_ms'], '.0f')} | {r['paper']} |"
        )
    lines.append(f"\n{PAPER_OTHERS}")
    for r in rows:  # metrics and cost must describe the same setting: say so when they do not
        evaluated = r.get("evaluated_image_size")
        if evaluated and [int(s) for s in evaluated] != [int(s) for s in image_size]:
            lines.append(f"\nNote: {r['variant']} was evaluated at {'x'.join(map(str, evaluated))}, its GFLOPs are for {size}.")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle_root", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    ap.add_argument("--work_dir", required=True, help="one sub-folder per variant")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--train", action="store_true", help="train each variant first (resumes if interrupted)")
    ap.add_argument("--evaluate", action="store_true", help="evaluate each variant on the test split")
    ap.add_argument(
        "--recipe", action="store_true", help="train and evaluate with configs/train_recipe.json over train.json"
    )
    ap.add_argument("--override", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides for every variant")
    ap.add_argument("--latency_repeats", type=int, default=5, help="timed CPU forwards per variant (0: no latency)")
    ap.add_argument("--output", help="also write the table (markdown) and the rows (JSON beside it) here")
    args = ap.parse_args(argv)
    bundle_root = os.path.abspath(args.bundle_root)
    common = parse_overrides(args.override)
    if args.recipe:  # the recipe's colour constancy is a RIBCUNet layer: off, so that all networks see the same input
        common = {"colour_constancy": "none", **common}
    for name in args.variants:
        if args.train or args.evaluate:
            run_variant(bundle_root, args.work_dir, name, common, args.train, args.evaluate, args.recipe)
    rows = collect(bundle_root, args.work_dir, args.variants, common, args.latency_repeats)
    image_size = common.get("image_size", load_config(bundle_root, [TRAIN_CONFIG]).get_parsed_content("image_size"))
    table = format_table(rows, image_size)
    if args.recipe:
        table += f"\n\nRecipe: {RECIPE_CONFIG} over {TRAIN_CONFIG}, colour constancy {common['colour_constancy']}."
    print(table)
    if args.output:
        with open(args.output, "w") as f:
            f.write(table + "\n")
        with open(os.path.splitext(args.output)[0] + ".json", "w") as f:
            json.dump(rows, f, indent=2)
    return table


if __name__ == "__main__":
    main()
