# Copyright (c) the dermseg contributors. Apache-2.0.
"""``make demo``: run the app on the shipped samples into ./demo_output and say where the results are.

Uses the bundle's exported model (training_bundle/models/model.ts) where there is one; otherwise, so the demo
still shows the whole pipeline, a small randomly initialised model, clearly labelled as such in every output.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from operators.model import resolve_model_file

from .settings import DEFAULT_MODEL_PATH

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "samples" / "input"
OUTPUT = REPO / "demo_output"


def _untrained_model(folder: Path) -> Path:
    import torch

    from networks import RIBCUNet

    torch.manual_seed(0)
    path = folder / "untrained_demo_model.ts"
    model = torch.jit.script(RIBCUNet(channels=(4, 8, 16, 32, 64)).eval())
    metadata = {"name": "dermseg-UNTRAINED-demo", "version": "0.0.0", "description": "random weights: demo only"}
    torch.jit.save(model, str(path), _extra_files={"metadata.json": json.dumps(metadata)})
    return path


def main() -> int:
    with tempfile.TemporaryDirectory() as scratch:
        model = DEFAULT_MODEL_PATH
        try:
            resolve_model_file(model)
        except (FileNotFoundError, ValueError):
            print(f"No trained model in {model}: the demo uses an UNTRAINED model (its masks mean nothing).")
            model = _untrained_model(Path(scratch))
        command = [sys.executable, "-m", "monai_app", "-i", str(SAMPLES), "-o", str(OUTPUT), "-m", str(model)]
        status = subprocess.call(command, cwd=REPO, env=dict(os.environ))
    if status != 0:
        print(f"The app failed (exit {status}).", file=sys.stderr)
        return status
    results = json.loads((OUTPUT / "results.json").read_text())
    print(f"\nResults in {OUTPUT}/ (results.json, and one folder per image: SEG, SR, overlays):")
    for case in results["cases"]:
        area = case.get("lesion_area_mm2")
        area_text = f"{area} mm2" if area is not None else f"{case.get('lesion_area_px')} px"
        detail = case["error"] if case["status"] != "ok" else f"confidence {case['confidence']}, {case['route']}, area {area_text}"
        print(f"  {case['source_file']}: {case['status']}: {detail}")
        if case["status"] == "ok":
            print(f"      overlay: {OUTPUT / case['outputs']['overlay_png']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
