# Copyright (c) the dermseg contributors. Apache-2.0.
"""Finding and loading the exported model: TorchScript only (no pickle is ever unpickled), metadata included."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Tuple

import torch

from .case import ModelInfo

__all__ = ["resolve_model_file", "load_torchscript_model", "read_model_info"]

MODEL_SUFFIXES = (".ts", ".pt", ".pth", ".zip")


def resolve_model_file(path) -> Path:
    """The model file itself: ``path`` if a file, else the one model file in that folder (a MAP's models/).

    Raises FileNotFoundError with a clear message where there is none, or several to choose from.
    """
    path = Path(path)
    if path.is_file():
        candidate = path
    elif path.is_dir():
        found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in MODEL_SUFFIXES)
        if len(found) != 1:
            raise FileNotFoundError(
                f"expected exactly one model file ({', '.join(MODEL_SUFFIXES)}) under {path}, found {len(found)}"
            )
        candidate = found[0]
    else:
        raise FileNotFoundError(f"no model at {path}")
    if not _is_torchscript_archive(candidate):
        raise ValueError(f"{candidate} is not a TorchScript archive (models are only loaded as TorchScript)")
    return candidate


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
    """Name and version from the ``metadata.json`` that MONAI's ``ckpt_export`` embeds in the TorchScript."""
    try:
        metadata = json.loads(extra_metadata) if extra_metadata else {}
    except ValueError:
        metadata = {}
    if not isinstance(metadata, dict):
        metadata = {}
    name = str(metadata.get("name") or fallback_name)[:64]
    version = str(metadata.get("version") or "unknown")[:64]
    return ModelInfo(name=name, version=version)


def load_torchscript_model(path, device: torch.device | str = "cpu") -> Tuple[torch.jit.ScriptModule, ModelInfo]:
    """Load the model once: the TorchScript module in eval mode, and who it is (name, version)."""
    model_file = resolve_model_file(path)
    extra_files = {"metadata.json": ""}
    module = torch.jit.load(str(model_file), map_location=device, _extra_files=extra_files)
    module.eval()
    return module, read_model_info(extra_files["metadata.json"], fallback_name=model_file.stem)
