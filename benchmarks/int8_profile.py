"""Where the shipped model's time goes in ONNX Runtime: ``model.onnx`` against ``model_int8.onnx``.

    .venv/bin/python benchmarks/int8_profile.py [--model training_bundle/models] [--rounds 6] [--calls 15]

Both exports of the model folder are timed at batch 1 and the input size their metadata states, alternating
(``--rounds`` rounds of ``--calls`` calls each, the median reported), at each of ONNX Runtime's graph
optimisation levels, with the app's session settings (``torch.get_num_threads()`` threads, no spinning).  Then
ONNX Runtime's own profile (``enable_profiling``) of each at the full optimisation level gives the share of each
operator type: what the int8 model saves in its convolutions and what its quantize, dequantize and transpose
nodes cost.  Information for the int8-against-float question; the app's choice is ``DERMSEG_MODEL_PRECISION``.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import onnxruntime as ort
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from operators.model import load_model, onnx_session_options, resolve_model_file  # noqa: E402

LEVELS = [name for name in ("ORT_ENABLE_BASIC", "ORT_ENABLE_EXTENDED", "ORT_ENABLE_LAYOUT", "ORT_ENABLE_ALL")
          if hasattr(ort.GraphOptimizationLevel, name)]


def session(path: Path, level: str, profile_prefix: str | None = None) -> ort.InferenceSession:
    options = onnx_session_options()  # the app's
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def operator_shares(exports: Dict[str, Path], image: np.ndarray, rounds: int, calls: int, scratch: str) -> Dict[str, Dict[str, float]]:
    """Milliseconds per call of each operator type in each export, from ONNX Runtime's profile, the exports
    profiled alternately (``rounds`` sessions of ``calls`` calls each), as they are timed."""
    microseconds: Dict[str, Dict[str, float]] = {kind: collections.Counter() for kind in exports}
    for round_ in range(rounds):
        for kind, path in exports.items():
            sess = session(path, "ORT_ENABLE_ALL", profile_prefix=os.path.join(scratch, f"{kind}{round_}"))
            name = sess.get_inputs()[0].name
            sess.run(None, {name: image})  # warm-up, outside the profile's sums below
            for _ in range(calls):
                sess.run(None, {name: image})
            with open(sess.end_profiling()) as f:
                events = json.load(f)
            nodes = [e for e in events if e.get("cat") == "Node" and "op_name" in e.get("args", {})]
            runs = calls + 1
            for event in nodes[len(nodes) // runs :]:  # the warm-up call's nodes come first
                microseconds[kind][event["args"]["op_name"]] += event["dur"]
    return {kind: {op: us / rounds / calls / 1000 for op, us in ops.items()} for kind, ops in microseconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=REPO / "training_bundle" / "models")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--calls", type=int, default=15)
    args = parser.parse_args()
    exports = {"float": resolve_model_file(args.model, kind="onnx"), "int8": resolve_model_file(args.model, kind="int8")}
    height, width = load_model(exports["float"])[1].input_size
    image = np.random.default_rng(0).random((1, 3, height, width), dtype=np.float32)

    sessions = {(kind, level): session(path, level) for kind, path in exports.items() for level in LEVELS}
    for sess in sessions.values():  # warm-up
        sess.run(None, {sess.get_inputs()[0].name: image})
    times: Dict[tuple, List[float]] = collections.defaultdict(list)
    for _ in range(args.rounds):
        for key, sess in sessions.items():
            name = sess.get_inputs()[0].name
            start = time.perf_counter()
            for _ in range(args.calls):
                sess.run(None, {name: image})
            times[key].append((time.perf_counter() - start) / args.calls * 1000)

    print(f"\n{args.model}: batch 1, {height}x{width}, {torch.get_num_threads()} threads; median of {args.rounds} "
          f"rounds of {args.calls} calls, alternating\n")
    print("| optimisation level | float ms | int8 ms | int8 vs float |\n|---|---:|---:|---:|")
    for level in LEVELS:
        fp, q = (statistics.median(times[(kind, level)]) for kind in ("float", "int8"))
        print(f"| {level} | {fp:.1f} | {q:.1f} | {q / fp:.2f}x |")

    with tempfile.TemporaryDirectory(prefix="dermseg-ort-profile-") as scratch:
        shares = operator_shares(exports, image, args.rounds, args.calls, scratch)
    print(f"\nONNX Runtime's profile at ORT_ENABLE_ALL, the exports alternating ({args.rounds} rounds of {args.calls} "
          "calls): ms per call summed over each operator type's nodes (profiling adds its own cost)\n")
    print("| export | operator type | ms | share |\n|---|---|---:|---:|")
    for kind, ops in shares.items():
        total = sum(ops.values())
        for op, ms in sorted(ops.items(), key=lambda item: -item[1])[:8]:
            print(f"| {kind} | {op} | {ms:.1f} | {100 * ms / total:.0f}% |")
        print(f"| {kind} | all | {total:.1f} | 100% |")


if __name__ == "__main__":
    main()
