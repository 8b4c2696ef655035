# Copyright (c) the dermseg contributors. Apache-2.0.
"""Export the bundle's network with its trained weights to ONNX, with the bundle's metadata embedded, and check
ONNX Runtime against PyTorch on a random input.

    python training_bundle/scripts/export_onnx.py --bundle_root training_bundle

writes ``models/model.onnx``: input ``image`` (N, 3, 256, 256) float32 RGB in [0, 1], output ``pred``
(N, 1, 256, 256) lesion logits, the batch dimension dynamic.  The ONNX ``metadata_props`` hold the bundle's
``name``, ``version`` and the whole ``metadata.json`` under ``"metadata.json"``, as ``ckpt_export`` embeds it in
``model.ts``; ``--meta_file`` embeds another one (a new version's).  ``network_def`` comes from ``train.json``
(with ``inference.json`` layered over it, as ``ckpt_export`` reads them); for a model trained with the modern
recipe add its layer, ``--config_file configs/train.json configs/train_recipe.json configs/inference.json``, so
that the export has the recipe's network settings (its colour constancy).  Use
``--override channels=[64,128,256,512,1024]`` (etc.) for a network trained with overrides.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from networks.export import ONNX_INPUT, ONNX_OUTPUT  # noqa: E402
from networks.export import export_onnx as export_network_onnx  # noqa: E402
from scripts._config import INFERENCE_CONFIGS, load_config, parse_overrides  # noqa: E402

__all__ = ["export_onnx"]


def export_onnx(
    bundle_root: str,
    filepath: str | None = None,
    ckpt_file: str | None = None,
    config_file: Sequence[str] = INFERENCE_CONFIGS,
    overrides: dict | None = None,
    opset: int = 18,
    atol: float = 1e-3,
    meta_file: str | None = None,
) -> str:
    """Export and verify; returns the ONNX file's path.  Raises if ONNX Runtime disagrees with PyTorch."""
    import onnxruntime

    parser = load_config(bundle_root, config_file, overrides)
    filepath = filepath or os.path.join(bundle_root, "models", "model.onnx")
    ckpt_file = ckpt_file or os.path.join(bundle_root, "models", "model.pt")
    meta = parser.get("_meta_")
    if meta_file:  # a new version's metadata (as ``ckpt_export --meta_file`` takes it)
        with open(meta_file) as f:
            meta = json.load(f)
    image = meta["network_data_format"]["inputs"]["image"]

    net = parser.get_parsed_content("network_def").eval()
    state = torch.load(ckpt_file, map_location="cpu", weights_only=True)
    net.load_state_dict(state.get("model", state) if isinstance(state, dict) and "model" in state else state)
    example = torch.rand(1, image["num_channels"], *[int(s) for s in image["spatial_shape"]])

    os.makedirs(os.path.dirname(os.path.abspath(filepath)), exist_ok=True)
    export_network_onnx(net, filepath, metadata=meta, example_shape=tuple(example.shape), opset=opset)

    batch = torch.rand(2, *example.shape[1:])
    with torch.no_grad():
        expected = net(batch).numpy()
    session = onnxruntime.InferenceSession(filepath, providers=["CPUExecutionProvider"])
    got = session.run([ONNX_OUTPUT], {ONNX_INPUT: batch.numpy()})[0]
    err = float(np.abs(got - expected).max())
    if not np.allclose(got, expected, atol=atol, rtol=1e-3):
        raise RuntimeError(f"ONNX Runtime differs from PyTorch by up to {err:.3g}")
    print(f"exported {filepath}; ONNX Runtime matches PyTorch (max abs difference {err:.2e})")
    return filepath


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle_root", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    ap.add_argument("--filepath", help="ONNX file to write (default models/model.onnx)")
    ap.add_argument("--ckpt_file", help="weights (default models/model.pt)")
    ap.add_argument("--meta_file", help="metadata.json to embed (default the bundle's configs/metadata.json)")
    ap.add_argument("--config_file", nargs="+", default=list(INFERENCE_CONFIGS),
                    help="config files, layered in this order, defining network_def (default: train.json, inference.json)")
    ap.add_argument("--override", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides, e.g. bi_convgru=False")
    ap.add_argument("--opset", type=int, default=18)
    args = ap.parse_args(argv)
    export_onnx(
        args.bundle_root, args.filepath, args.ckpt_file, args.config_file, parse_overrides(args.override), args.opset,
        meta_file=args.meta_file,
    )


if __name__ == "__main__":
    main()
