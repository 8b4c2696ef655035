# Copyright (c) the dermseg contributors. Apache-2.0.
"""What one CPU training step costs, by precision, memory format and image size, beside MONAI's BasicUNet
measured the same way in the same run.

    cd benchmarks && ../.venv/bin/python train_step.py [--sizes 128 192 256] [--repeats 3]

A step is the bundle's: batch 8, the forward through ``scripts.recipe.MixedPrecision`` (bf16 autocast or
float32, channels_last or not), Dice + BCE on float32 logits, backward, AdamW.  The median of ``--repeats``
steps after one warm-up step, on ``--threads`` threads; the epoch column multiplies it by the training split's
227 steps (1815 images), without validation or data loading.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "training_bundle"))

from monai.losses import DiceCELoss  # noqa: E402
from monai.networks.nets import BasicUNet  # noqa: E402

from networks import RIBCUNet  # noqa: E402
from scripts.recipe import MixedPrecision  # noqa: E402

STEPS_PER_EPOCH = 227
SETTINGS = [("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True)]
NETWORKS = {
    "RIBCUNet width 12 (shipped)": lambda: RIBCUNet(channels=(12, 24, 48, 96, 192)),
    "MONAI BasicUNet": lambda: BasicUNet(spatial_dims=2, in_channels=3, out_channels=1),
}


def step_seconds(make, precision: str, channels_last: bool, size: int, repeats: int, batch: int = 8) -> float:
    torch.manual_seed(0)
    network = make()
    if channels_last:
        network = network.to(memory_format=torch.channels_last)
    model = MixedPrecision(network, precision, channels_last).train()
    optimizer = torch.optim.AdamW(network.parameters(), 1e-4)
    loss_function = DiceCELoss(sigmoid=True)
    x = torch.rand(batch, 3, size, size)
    y = (torch.rand(batch, 1, size, size) > 0.5).float()
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        optimizer.zero_grad()
        loss_function(model(x), y).backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 192, 256])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, batch 8, median of {args.repeats} steps\n")
    print("| network | px | precision | channels_last | s per step | speed-up vs fp32 NCHW | min per epoch (227 steps) |")
    print("|---|---:|---|---|---:|---:|---:|")
    for name, make in NETWORKS.items():
        for size in args.sizes:
            base = None
            for precision, channels_last in SETTINGS:
                seconds = step_seconds(make, precision, channels_last, size, args.repeats)
                base = base or seconds
                print(f"| {name} | {size} | {precision} | {'yes' if channels_last else 'no'} | {seconds:.2f} | "
                      f"{base / seconds:.2f}x | {seconds * STEPS_PER_EPOCH / 60:.1f} |", flush=True)


if __name__ == "__main__":
    main()
