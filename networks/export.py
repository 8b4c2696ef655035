# Copyright (c) the dermseg contributors. Apache-2.0.
"""The one ONNX export of a segmentation network, shared by the bundle, the benchmarks and the tests.

The contract matches the bundle's TorchScript export: input ``image`` (N, C, H, W) float32, output ``pred``
(N, 1, H, W) logits, the batch dimension dynamic.  The bundle's ``metadata.json`` travels in the ONNX
``metadata_props`` (keys ``name``, ``version`` and ``metadata.json``), where ``operators.model`` reads it.
"""

from __future__ import annotations

import io
import json
import os
from typing import Mapping, Optional, Sequence, Union

import torch

from .durable import atomic_write_bytes

__all__ = ["export_onnx", "ONNX_INPUT", "ONNX_OUTPUT", "ONNX_METADATA_KEY"]

ONNX_INPUT = "image"
ONNX_OUTPUT = "pred"
ONNX_METADATA_KEY = "metadata.json"


def export_onnx(
    module: torch.nn.Module,
    target: Union[str, os.PathLike, None] = None,
    metadata: Optional[Mapping] = None,
    example_shape: Sequence[int] = (1, 3, 256, 256),
    opset: int = 18,
) -> bytes:
    """Export ``module`` (eager or TorchScript) to ONNX; returns the serialized model, also written to ``target``.

    Args:
        module: the network in eval mode.
        target: file to write, or None to keep the model in memory only.
        metadata: the bundle's ``metadata.json`` content; embedded when given (needs the ``onnx`` package).
        example_shape: shape of the tracing input; only the batch dimension stays dynamic.
        opset: ONNX opset version.
    """
    buffer = io.BytesIO()
    torch.onnx.export(
        module,
        (torch.rand(*example_shape),),
        buffer,
        input_names=[ONNX_INPUT],
        output_names=[ONNX_OUTPUT],
        dynamic_axes={ONNX_INPUT: {0: "batch"}, ONNX_OUTPUT: {0: "batch"}},
        opset_version=opset,
        dynamo=False,  # the TorchScript-based exporter handles this network's dynamic batch reliably
    )
    serialized = buffer.getvalue()
    if metadata is not None:
        import onnx

        model = onnx.load_from_string(serialized)
        entries = {"name": metadata.get("name", ""), "version": metadata.get("version", ""), ONNX_METADATA_KEY: json.dumps(metadata)}
        for key, value in entries.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, str(value)
        onnx.checker.check_model(model)
        serialized = model.SerializeToString()
    if target is not None:  # an interrupted export never leaves a half-written model where the app looks
        atomic_write_bytes(target, serialized)
    return serialized
