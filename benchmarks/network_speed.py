"""CPU speed of RIBCUNet against MONAI's U-Nets: inference at batch 1 and 8, one training step at batch 8.

    .venv/bin/python benchmarks/network_speed.py [--size 256] [--repeats 5] [--skip-paper-width]

Every network is measured in the same run, with ``torch.get_num_threads()`` = the machine's cores, after a
warm-up pass; the median of ``--repeats`` timed passes is reported.  Achieved GFLOP/s is set against this
machine's own float32 matrix-multiply peak measured at the start of the run (the physical limit here), so the
ratios mean the same on any machine (information only: wall-clock time is what the edge box feels).
Inference runs in the forms the app serves: ONNX Runtime with the int8 model (its CPU default), with the float
model, and frozen TorchScript (its GPU path's format), each network exported and quantized the way the bundle
does it (``scripts/export_onnx.py``, ``scripts/quantize_onnx.py``; calibrated here on the shipped ISIC sample).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import torch
from torch.utils.flop_counter import FlopCounterMode

from network_size import COMPACT_WIDTH, PAPER_WIDTH, SHIPPED_WIDTH, ribcunet
from monai.networks.nets import AttentionUnet, BasicUNet, UNet
from networks.export import export_onnx
from networks.preprocessing import read_rgb, rgb_to_model_input

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "training_bundle"))
from scripts.quantize_onnx import quantize_static_int8  # noqa: E402

CALIBRATION = sorted((REPO / "tests" / "data" / "isic_sample" / "ISIC2018_Task1-2_Training_Input").glob("*.jpg"))


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


def onnx_session(net: torch.nn.Module, example: torch.Tensor, int8: bool = False):
    """The network in ONNX Runtime, exported as the bundle's ``export_onnx.py`` exports the shipped model, and
    with ``int8`` quantized as ``quantize_onnx.py`` quantizes it."""
    import onnxruntime

    serialized = export_onnx(net, example_shape=tuple(example.shape))
    if int8:
        size = tuple(example.shape[-2:])
        inputs = [rgb_to_model_input(read_rgb(p), size)[None].numpy() for p in CALIBRATION]
        with tempfile.TemporaryDirectory() as work:
            Path(work, "float.onnx").write_bytes(serialized)
            serialized = quantize_static_int8(str(Path(work, "float.onnx")), inputs).SerializeToString()
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
    int8_session = onnx_session(net, x1, int8=True)
    row: Dict[str, float] = {"params_m": sum(p.numel() for p in net.parameters()) / 1e6, "gflop": gflop1}
    with torch.inference_mode():
        row["ms_b1"] = 1e3 * median_seconds(lambda: scripted(x1), repeats)
        row["ms_b8"] = 1e3 * median_seconds(lambda: scripted(x8), max(1, repeats // 2))
    a1, a8 = x1.numpy(), x8.numpy()
    row["ort_ms_b1"] = 1e3 * median_seconds(lambda: session.run(None, {"image": a1}), repeats)
    row["ort_ms_b8"] = 1e3 * median_seconds(lambda: session.run(None, {"image": a8}), max(1, repeats // 2))
    row["int8_ms_b1"] = 1e3 * median_seconds(lambda: int8_session.run(None, {"image": a1}), repeats)
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

    print(f"\nCPU, {args.size}x{args.size} RGB, batch 1; ONNX Runtime int8 (the app's CPU default), float, and "
          f"frozen TorchScript\n")
    print("| network | ORT int8 ms | ORT float ms | TorchScript ms | int8 vs float | int8 vs BasicUNet int8 |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in rows:
        print(f"| {name} | {r['int8_ms_b1']:.0f} | {r['ort_ms_b1']:.0f} | {r['ms_b1']:.0f} | "
              f"{r['int8_ms_b1'] / r['ort_ms_b1']:.2f}x | {r['int8_ms_b1'] / base['int8_ms_b1']:.2f}x |")
    print(f"\nCPU, {args.size}x{args.size} RGB; float inference in ONNX Runtime and frozen TorchScript; GFLOP/s "
          f"for information, against this machine's matmul peak {peak:.0f} GFLOP/s\n")
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
