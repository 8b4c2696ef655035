"""CPU speed of RIBCUNet against MONAI's U-Nets: inference at batch 1 and 8, one training step at batch 8.

    .venv/bin/python benchmarks/network_speed.py [--size 256] [--repeats 5] [--skip-paper-width]

Every network is measured in the same run, with ``torch.get_num_threads()`` = the machine's cores, after a
warm-up pass; the median of ``--repeats`` timed passes is reported.  Achieved GFLOP/s is set against this
machine's own float32 matrix-multiply peak measured at the start of the run (the physical limit here), so the
ratios mean the same on any machine.  Inference runs in both forms the app serves: ONNX Runtime (its CPU path)
and frozen TorchScript (its GPU path's format), each network exported the same way.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Callable, Dict, List, Tuple

import torch
from torch.utils.flop_counter import FlopCounterMode

from network_size import COMPACT_WIDTH, PAPER_WIDTH, SHIPPED_WIDTH, ribcunet
from monai.networks.nets import AttentionUnet, BasicUNet, UNet
from networks.export import export_onnx


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: allocator, TorchScript profiling run, oneDNN primitive caches
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_peak_gflops(repeats: int = 5, n: int = 2048) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / median_seconds(lambda: a @ b, repeats) / 1e9


def flops(net: torch.nn.Module, x: torch.Tensor) -> float:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        net(x)
    return float(counter.get_total_flops())


def onnx_session(net: torch.nn.Module, example: torch.Tensor):
    """The network in ONNX Runtime, exported as the bundle's ``export_onnx.py`` exports the shipped model."""
    import onnxruntime

    serialized = export_onnx(net, example_shape=tuple(example.shape))
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(serialized, options, providers=["CPUExecutionProvider"])


def measure(name: str, build: Callable[[], torch.nn.Module], size: int, repeats: int) -> Dict[str, float]:
    torch.manual_seed(0)
    net = build().eval()
    x1 = torch.rand(1, 3, size, size)
    x8 = torch.rand(8, 3, size, size)
    gflop1 = flops(net, x1) / 1e9
    scripted = torch.jit.freeze(torch.jit.script(net))
    session = onnx_session(net, x1)
    row: Dict[str, float] = {"params_m": sum(p.numel() for p in net.parameters()) / 1e6, "gflop": gflop1}
    with torch.inference_mode():
        row["ms_b1"] = 1e3 * median_seconds(lambda: scripted(x1), repeats)
        row["ms_b8"] = 1e3 * median_seconds(lambda: scripted(x8), max(1, repeats // 2))
    a1, a8 = x1.numpy(), x8.numpy()
    row["ort_ms_b1"] = 1e3 * median_seconds(lambda: session.run(None, {"image": a1}), repeats)
    row["ort_ms_b8"] = 1e3 * median_seconds(lambda: session.run(None, {"image": a8}), max(1, repeats // 2))
    net.train()
    optimizer = torch.optim.Adam(net.parameters(), 1e-3)
    target = (torch.rand(8, 1, size, size) > 0.5).float()
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(net(x8), target).backward()
        optimizer.step()

    row["s_train_b8"] = median_seconds(train_step, max(1, repeats // 2))
    for prefix in ("", "ort_"):
        row[f"{prefix}gflops_b1"] = gflop1 / (row[f"{prefix}ms_b1"] / 1e3)
        row[f"{prefix}gflops_b8"] = 8 * gflop1 / (row[f"{prefix}ms_b8"] / 1e3)
    print(f"  measured {name}", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-paper-width", action="store_true", help="leave out the 58 M-parameter paper width")
    parser.add_argument("--widths", type=int, nargs="*", default=[], metavar="W",
                        help="also RIBCUNet at top width W (levels W, 2W, 4W, 8W, 16W), e.g. to find where its "
                        "achieved GFLOP/s meets BasicUNet's")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)

    nets: List[Tuple[str, Callable[[], torch.nn.Module]]] = [
        ("RIBCUNet width 12 (shipped)", ribcunet(SHIPPED_WIDTH)),
        ("RIBCUNet width 16", ribcunet(COMPACT_WIDTH)),
        ("MONAI UNet (16..256)", lambda: UNet(2, 3, 1, (16, 32, 64, 128, 256), (2, 2, 2, 2), num_res_units=2)),
        ("MONAI BasicUNet", lambda: BasicUNet(2, 3, 1)),
        ("MONAI AttentionUnet (16..256)", lambda: AttentionUnet(2, 3, 1, (16, 32, 64, 128, 256), (2, 2, 2, 2))),
    ]
    for width in sorted(args.widths, reverse=True):  # inserted at one place: ascending in the table
        nets.insert(2, (f"RIBCUNet width {width}", ribcunet(tuple(width * 2**level for level in range(5)))))
    if not args.skip_paper_width:
        nets.insert(1, ("RIBCUNet width 64 (paper)", ribcunet(PAPER_WIDTH)))

    peak = matmul_peak_gflops()
    print(f"{torch.get_num_threads()} threads; float32 matmul peak {peak:.0f} GFLOP/s (2048^3, median)", flush=True)
    rows = [(name, measure(name, build, args.size, args.repeats)) for name, build in nets]
    base = dict(rows)["MONAI BasicUNet"]

    print(f"\nCPU, {args.size}x{args.size} RGB; inference in ONNX Runtime (the app's CPU runtime) and frozen "
          f"TorchScript; matmul peak {peak:.0f} GFLOP/s\n")
    print("| network | params (M) | GFLOP/img | ORT ms b1 | ORT ms b1 vs BasicUNet | ORT img/s b8 | TorchScript ms b1 "
          "| TorchScript img/s b8 | ORT GFLOP/s b1 | ORT GFLOP/s b1 vs BasicUNet | TorchScript GFLOP/s b1 "
          "| ORT b8 % of matmul peak |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in rows:
        print(
            f"| {name} | {r['params_m']:.2f} | {r['gflop']:.1f} | {r['ort_ms_b1']:.0f} "
            f"| {r['ort_ms_b1'] / base['ort_ms_b1']:.2f}x | {8e3 / r['ort_ms_b8']:.2f} | {r['ms_b1']:.0f} "
            f"| {8e3 / r['ms_b8']:.2f} | {r['ort_gflops_b1']:.0f} | {r['ort_gflops_b1'] / base['ort_gflops_b1']:.2f}x "
            f"| {r['gflops_b1']:.0f} | {100 * r['ort_gflops_b8'] / peak:.0f}% |"
        )
    print("\nOne training step, batch 8, eager PyTorch (Adam, BCE)\n")
    print("| network | s per step | vs BasicUNet |")
    print("|---|---:|---:|")
    for name, r in rows:
        print(f"| {name} | {r['s_train_b8']:.2f} | {r['s_train_b8'] / base['s_train_b8']:.2f}x |")


if __name__ == "__main__":
    main()
