# Copyright (c) the dermseg contributors. Apache-2.0.
"""Finding and loading the exported model, with its metadata: TorchScript or ONNX, never a pickle.

The bundle exports the same weights twice: ``model.ts`` (TorchScript, ``ckpt_export``) and ``model.onnx``
(``scripts/export_onnx.py``).  On the CPU, ONNX Runtime runs this network in about 0.7x of TorchScript's time
and needs no warm-up calls (``benchmarks/app_throughput.py`` measures both), so a folder holding both is served
with ONNX Runtime on the CPU and with TorchScript on a GPU.  Either way the model is a callable from a float
(N, 3, 256, 256) tensor to (N, 1, 256, 256) logits.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Callable, Optional, Tuple

import torch

from networks.export import ONNX_METADATA_KEY

from .case import ModelInfo

__all__ = ["resolve_model_file", "load_model", "load_torchscript_model", "OnnxRuntimeModel", "read_model_info"]

TORCHSCRIPT_SUFFIXES = (".ts", ".pt", ".pth", ".zip")
ONNX_SUFFIX = ".onnx"


def resolve_model_file(path, device: torch.device | str = "cpu", kind: Optional[str] = None) -> Path:
    """The model file itself: ``path`` if a file, else the model file in that folder (a MAP's models/).

    A folder may hold one TorchScript archive and one ONNX model of the same network; unless ``kind``
    (``"onnx"`` or ``"torchscript"``) asks for one, ONNX is chosen on the CPU where ONNX Runtime is installed and
    TorchScript otherwise.  Files that are neither (state dicts, checkpoints) are ignored.  Raises
    FileNotFoundError where there is no model (of that kind) or several of one kind, ValueError for a file that
    is not a model.
    """
    path = Path(path)
    if path.is_file():
        found = "onnx" if path.suffix.lower() == ONNX_SUFFIX else "torchscript" if _is_torchscript_archive(path) else None
        if found is None:
            raise ValueError(f"{path} is neither a TorchScript archive nor an ONNX model (pickles are never loaded)")
        if kind is not None and kind != found:
            raise ValueError(f"{path} is a {found} model; a {kind} model is needed here")
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"no model at {path}")
    files = sorted(p for p in path.rglob("*") if p.is_file())
    by_kind = {
        "onnx": [p for p in files if p.suffix.lower() == ONNX_SUFFIX],
        "torchscript": [p for p in files if p.suffix.lower() in TORCHSCRIPT_SUFFIXES and _is_torchscript_archive(p)],
    }
    for model_kind, found in by_kind.items():
        if len(found) > 1:
            names = ", ".join(str(p.relative_to(path)) for p in found)
            raise FileNotFoundError(f"expected at most one {model_kind} model under {path}, found {len(found)}: {names}")
    if kind is not None:
        if not by_kind.get(kind):
            raise FileNotFoundError(f"no {kind} model under {path}")
        return by_kind[kind][0]
    if by_kind["onnx"] and (not by_kind["torchscript"] or _prefers_onnx(torch.device(device))):
        return by_kind["onnx"][0]
    if by_kind["torchscript"]:
        return by_kind["torchscript"][0]
    raise FileNotFoundError(f"no TorchScript ({', '.join(TORCHSCRIPT_SUFFIXES)}) or ONNX model under {path}")


def _prefers_onnx(device: torch.device) -> bool:
    if device.type != "cpu":
        return False
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def _is_torchscript_archive(path: Path) -> bool:
    """A TorchScript file is a zip with ``<name>/data.pkl`` and ``<name>/code/``: checked without loading it."""
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
    roots = {name.split("/", 1)[0] for name in names if name.endswith("/data.pkl") and name.count("/") == 1}
    return any(any(name.startswith(f"{root}/code/") for name in names) for root in roots)


def read_model_info(extra_metadata: str, fallback_name: str) -> ModelInfo:
    """Name and version from the bundle's ``metadata.json`` embedded in the export (TorchScript or ONNX)."""
    try:
        metadata = json.loads(extra_metadata) if extra_metadata else {}
    except ValueError:
        metadata = {}
    if not isinstance(metadata, dict):
        metadata = {}
    name = str(metadata.get("name") or fallback_name)[:64]
    version = str(metadata.get("version") or "unknown")[:64]
    return ModelInfo(name=name, version=version)


class OnnxRuntimeModel:
    """An ONNX model in an ONNX Runtime session, called like the TorchScript module: tensor in, tensor out."""

    def __init__(self, path: Path, device: torch.device):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        # as many threads as torch uses: OMP_NUM_THREADS and the container's CPU limit apply to both runtimes
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = onnxruntime.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # ONNX Runtime raises its own exception types for an unreadable model
            raise ValueError(f"{path}: not a loadable ONNX model ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ValueError(f"{path}: expected one input and one output, found {len(inputs)} and {len(outputs)}")
        self.input_name, self.output_name = inputs[0].name, outputs[0].name
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        array = inputs.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(self.session.run([self.output_name], {self.input_name: array})[0])


def load_model(path, device: torch.device | str = "cpu") -> Tuple[Callable[[torch.Tensor], torch.Tensor], ModelInfo]:
    """Load the model once (see ``resolve_model_file`` for which file): the callable and who it is."""
    device = torch.device(device)
    model_file = resolve_model_file(path, device)
    if model_file.suffix.lower() == ONNX_SUFFIX:
        model = OnnxRuntimeModel(model_file, device)
        return model, read_model_info(model.metadata.get(ONNX_METADATA_KEY, ""), fallback_name=model_file.stem)
    return load_torchscript_model(model_file, device)


def load_torchscript_model(path, device: torch.device | str = "cpu") -> Tuple[torch.jit.ScriptModule, ModelInfo]:
    """Load a TorchScript export (a file, or the one in a folder): the module in eval mode, and who it is."""
    model_file = resolve_model_file(path, device, kind="torchscript")
    extra_files = {"metadata.json": ""}
    module = torch.jit.load(str(model_file), map_location=device, _extra_files=extra_files)
    module.eval()
    return module, read_model_info(extra_files["metadata.json"], fallback_name=model_file.stem)
