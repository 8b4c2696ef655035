"""Parameters and GFLOP per image of RIBCUNet (widths, ablation variants) and MONAI peers.

    .venv/bin/python benchmarks/network_size.py [--size 256]

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` (2 FLOP per multiply-add, convolutions and
matrix products; elementwise work is not counted) on one forward pass of a ``1 x 3 x size x size`` input.
The networks are built on the ``meta`` device, so counting costs no compute even at the paper's width.
"""

from __future__ import annotations

import argparse
from typing import Callable, Dict, List, Tuple

import torch
from torch.utils.flop_counter import FlopCounterMode

from monai.networks.nets import AttentionUnet, BasicUNet, UNet

from networks import RIBCUNet

PAPER_WIDTH = (64, 128, 256, 512, 1024)
COMPACT_WIDTH = (16, 32, 64, 128, 256)
SHIPPED_WIDTH = (12, 24, 48, 96, 192)  # the training bundle's default: the width of the model the app ships


def ribcunet(channels, residual_inception=True, bi_convgru=True) -> Callable[[], torch.nn.Module]:
    return lambda: RIBCUNet(2, 3, 1, channels, residual_inception=residual_inception, bi_convgru=bi_convgru)


def networks() -> List[Tuple[str, Callable[[], torch.nn.Module]]]:
    """The networks of the README's tables: RIBCUNet widths and variants, then MONAI's U-Nets at defaults."""
    rows = []
    for label, width in (("paper width 64", PAPER_WIDTH), ("compact width 16", COMPACT_WIDTH), ("shipped width 12", SHIPPED_WIDTH)):
        for variant, ri, bg in (
            ("U-Net", False, False),
            ("+ residual Inception", True, False),
            ("+ BiConvGRU", False, True),
            ("RIBCUNet (both)", True, True),
        ):
            rows.append((f"{variant}, {label}", ribcunet(width, ri, bg)))
    rows += [
        ("MONAI UNet (16..256, 2 res units)", lambda: UNet(2, 3, 1, (16, 32, 64, 128, 256), (2, 2, 2, 2), num_res_units=2)),
        ("MONAI BasicUNet (defaults)", lambda: BasicUNet(2, 3, 1)),
        ("MONAI AttentionUnet (16..256)", lambda: AttentionUnet(2, 3, 1, (16, 32, 64, 128, 256), (2, 2, 2, 2))),
    ]
    return rows


def measure(build: Callable[[], torch.nn.Module], size: int) -> Dict[str, float]:
    with torch.device("meta"):
        net = build().eval()
        x = torch.empty(1, 3, size, size)
    params = sum(p.numel() for p in net.parameters())
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        net(x)
    return {"params_m": params / 1e6, "gflop": counter.get_total_flops() / 1e9}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="square input side in pixels")
    args = parser.parse_args()
    rows = [(name, measure(build, args.size)) for name, build in networks()]
    reference = dict(rows)["MONAI BasicUNet (defaults)"]
    print(f"Network size per {args.size}x{args.size} RGB image (forward, batch 1)\n")
    print(f"| network | params (M) | GFLOP | GFLOP vs BasicUNet |")
    print(f"|---|---:|---:|---:|")
    for name, m in rows:
        print(f"| {name} | {m['params_m']:.2f} | {m['gflop']:.1f} | {m['gflop'] / reference['gflop']:.2f}x |")


if __name__ == "__main__":
    main()
