# Copyright (c) the dermseg contributors. Apache-2.0.
"""An exported ONNX model (float or int8) as a ``torch.nn.Module``, so ``evaluate.json`` and ``inference.json``
score exactly what the app serves: ``--onnx_file models/model_int8.onnx``."""

from __future__ import annotations

import torch

from operators.model import OnnxRuntimeModel, resolve_model_file

__all__ = ["OnnxRuntimeNetwork"]


class OnnxRuntimeNetwork(torch.nn.Module):
    """``(N, 3, H, W)`` float RGB to ``(N, 1, H, W)`` logits through ONNX Runtime, on the CPU, at the size the
    model was exported at; the app's own loader (``operators.model``) opens the file."""

    def __init__(self, onnx_file: str) -> None:
        super().__init__()
        path = resolve_model_file(onnx_file)
        if path.suffix.lower() != ".onnx":
            raise ValueError(f"{onnx_file}: not an ONNX model")
        self.model = OnnxRuntimeModel(path, torch.device("cpu"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).to(x.device)
