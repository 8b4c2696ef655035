# Copyright (c) the dermseg contributors. Apache-2.0.
"""Finding and loading the exported model, with its metadata: TorchScript or ONNX, never a pickle.

The bundle exports the same weights three times: ``model.ts`` (TorchScript, ``ckpt_export``), ``model.onnx``
(``scripts/export_onnx.py``) and ``model_int8.onnx`` (``scripts/quantize_onnx.py``, the ONNX model with int8
weights and activations).  On the CPU, ONNX Runtime runs this network faster than TorchScript and needs no
warm-up calls, and the int8 model in 0.65x-1.0x of the float model's time on a CPU with VNNI and about 1.0x on
one with AVX2 only (``benchmarks/network_speed.py`` measures all three, ``benchmarks/int8_profile.py`` why), so a
folder is served with ONNX Runtime on the CPU (the int8 model where there is one, unless precision ``"fp32"`` is
asked for) and with TorchScript on a GPU.  Either way the model is a callable from a float (N, 3, H, W) tensor to
(N, 1, H, W) logits, at the input size ``(H, W)`` its embedded metadata states (``ModelInfo.input_size``).
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Callable, Optional, Tuple

import torch

from networks.export import ONNX_METADATA_KEY
from networks.preprocessing import MODEL_INPUT_SIZE, mask_cleanup_of

from .case import ModelInfo

__all__ = [
    "resolve_model_file", "load_model", "load_torchscript_model", "OnnxRuntimeModel", "onnx_session_options",
    "read_model_info", "read_torchscript_metadata",
]

TORCHSCRIPT_SUFFIXES = (".ts", ".pt", ".pth", ".zip")
ONNX_SUFFIX = ".onnx"
INT8_ONNX_SUFFIX = "_int8.onnx"
PRECISIONS = ("int8", "fp32")


def _kind_of(path: Path) -> Optional[str]:
    name = path.name.lower()
    if name.endswith(INT8_ONNX_SUFFIX):
        return "int8"
    if name.endswith(ONNX_SUFFIX):
        return "onnx"
    return "torchscript" if _is_torchscript_archive(path) else None


def resolve_model_file(path, device: torch.device | str = "cpu", kind: Optional[str] = None, precision: str = "int8") -> Path:
    """The model file itself: ``path`` if a file, else the model file in that folder (a MAP's models/).

    A folder may hold one TorchScript archive, one float ONNX model and one int8 ONNX model (``*_int8.onnx``) of
    the same network.  Unless ``kind`` (``"torchscript"``, ``"onnx"`` or ``"int8"``) asks for one, the CPU gets
    the int8 model where there is one and ``precision`` is ``"int8"``, else the float ONNX model (where ONNX
    Runtime is installed), else TorchScript; a GPU gets TorchScript where there is one.  Files that are none of
    these (state dicts, checkpoints) are ignored.  Raises FileNotFoundError where there is no model (of that
    kind) or several of one kind, ValueError for a file that is not a model.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"model precision must be one of {PRECISIONS}, got {precision!r}")
    path = Path(path)
    if path.is_file():
        found = _kind_of(path) if path.suffix.lower() in (ONNX_SUFFIX, *TORCHSCRIPT_SUFFIXES) else None
        if found is None:
            raise ValueError(f"{path} is neither a TorchScript archive nor an ONNX model (pickles are never loaded)")
        if kind is not None and kind != found:
            raise ValueError(f"{path} is a {found} model; a {kind} model is needed here")
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"no model at {path}")
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in (ONNX_SUFFIX, *TORCHSCRIPT_SUFFIXES))
    by_kind = {k: [p for p in files if _kind_of(p) == k] for k in ("int8", "onnx", "torchscript")}
    for model_kind, found in by_kind.items():
        if len(found) > 1:
            names = ", ".join(str(p.relative_to(path)) for p in found)
            raise FileNotFoundError(f"expected at most one {model_kind} model under {path}, found {len(found)}: {names}")
    if kind is not None:
        if not by_kind.get(kind):
            raise FileNotFoundError(f"no {kind} model under {path}")
        return by_kind[kind][0]
    onnx = (by_kind["int8"] if precision == "int8" else []) + by_kind["onnx"]  # "fp32" never gets the int8 model
    if onnx and (not by_kind["torchscript"] or _prefers_onnx(torch.device(device))):
        return onnx[0]
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
    """Name, version, input size and mask clean-up from the bundle's ``metadata.json`` embedded in the export
    (TorchScript or ONNX).  A model without metadata is taken to have the default input size and no clean-up;
    metadata that states an input size which is not two positive sides, or a clean-up this code does not know,
    is refused, since the model would be served wrongly."""
    try:
        metadata = json.loads(extra_metadata) if extra_metadata else {}
    except ValueError:
        metadata = {}
    if not isinstance(metadata, dict):
        metadata = {}
    name = str(metadata.get("name") or fallback_name)[:64]
    version = str(metadata.get("version") or "unknown")[:64]
    precision = str(metadata.get("precision") or "fp32")[:16]
    try:
        mask_cleanup = mask_cleanup_of(metadata)
    except ValueError as exc:
        raise ValueError(f"model {name}: {exc}") from None
    return ModelInfo(
        name=name, version=version, input_size=_input_size(metadata, name), precision=precision, mask_cleanup=mask_cleanup
    )


def _input_size(metadata: dict, name: str) -> Tuple[int, int]:
    """``network_data_format.inputs.image.spatial_shape`` as ``(height, width)``; the default where absent."""
    try:
        shape = metadata["network_data_format"]["inputs"]["image"]["spatial_shape"]
    except (KeyError, TypeError):
        return MODEL_INPUT_SIZE
    try:
        size = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        size = ()
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"model {name}: its metadata states input spatial_shape {shape!r}, not (height, width)")
    return size


def onnx_session_options():
    """ONNX Runtime's session options as the app runs a model (``benchmarks/int8_profile.py`` times it so too)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    # as many threads as torch uses: OMP_NUM_THREADS and the container's CPU limit apply to both runtimes
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    # The app runs its other steps (decoding, writing) beside the model: threads that spin after each call,
    # ONNX Runtime's default, take a core from them (the whole app: 17.7 s against 18.5 s for 60 cases)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class OnnxRuntimeModel:
    """An ONNX model in an ONNX Runtime session, called like the TorchScript module: tensor in, tensor out."""

    def __init__(self, path: Path, device: torch.device):
        import onnxruntime

        options = onnx_session_options()
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


def load_model(path, device: torch.device | str = "cpu", precision: str = "int8") -> Tuple[Callable[[torch.Tensor], torch.Tensor], ModelInfo]:
    """Load the model once (see ``resolve_model_file`` for which file): the callable and who it is."""
    device = torch.device(device)
    model_file = resolve_model_file(path, device, precision=precision)
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


# ---------------------------------------------------------------------- checking an export before it is deployed


def read_torchscript_metadata(path) -> dict:
    """The ``metadata.json`` a TorchScript export embeds (MONAI's ``ckpt_export`` writes it), as the dict it holds.

    Unlike :func:`read_model_info`, which fills in defaults so that an export without metadata can still be
    served, this returns the metadata as written and refuses what it cannot read: the edge store installs a model
    under the version stated here.  Loading the archive with TorchScript (on the CPU) also proves it is one; no
    pickle is ever unpickled.  ValueError, naming the file, for a file that is not TorchScript or metadata that
    is not a JSON object.
    """
    extra_files = {"metadata.json": ""}
    try:
        torch.jit.load(str(path), map_location="cpu", _extra_files=extra_files)
    except Exception as exc:  # torch raises RuntimeError, ValueError or its own types for a bad archive
        first_line = next(iter(str(exc).splitlines()), "")
        raise ValueError(f"{path}: not a TorchScript model ({type(exc).__name__}: {first_line})") from None
    try:
        metadata = json.loads(extra_files["metadata.json"] or "{}")
    except ValueError as exc:
        raise ValueError(f"{path}: its metadata.json is not JSON ({exc})") from None
    if not isinstance(metadata, dict):
        raise ValueError(f"{path}: its metadata.json is not a JSON object")
    return metadata
