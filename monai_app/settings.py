# Copyright (c) the dermseg contributors. Apache-2.0.
"""The app's settings beyond the SDK's -i/-o/-m flags: environment variables, as a MAP is configured."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

import yaml

from operators.confidence import THRESHOLD_ENV, threshold_from_env
from operators.model import PRECISIONS

__all__ = ["AppSettings", "DEFAULT_MODEL_PATH", "APP_CONFIG_SECTION", "apply_app_config_defaults"]

# The section of app.yaml holding the app's own settings, by their environment variable names.
APP_CONFIG_SECTION = "dermseg"

# Where the training bundle exports its model, model.onnx and model.ts (the app picks one by device, see
# operators.model.resolve_model_file); a MAP sets HOLOSCAN_MODEL_PATH instead.
DEFAULT_MODEL_PATH = Path(__file__).resolve().parents[1] / "training_bundle" / "models"


def apply_app_config_defaults(environ=None) -> dict:
    """Use the ``dermseg:`` section of the app's configuration file as defaults for the environment.

    Inside a MAP the packager copies app.yaml into the package and points ``HOLOSCAN_CONFIG_PATH`` at it, so a
    site can set ``DERMSEG_SEND_TO`` and the other ``DERMSEG_*`` settings there; a variable set in the
    container's environment still wins.  Called once, before anything reads a setting, so every reader (these
    settings, the PACS sender's options) sees the same values.  Returns the defaults it applied.
    """
    environ = os.environ if environ is None else environ
    path = environ.get("HOLOSCAN_CONFIG_PATH")
    if not path or not Path(path).is_file():
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            config = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"HOLOSCAN_CONFIG_PATH={path}: cannot read the app configuration: {exc}") from None
    section = config.get(APP_CONFIG_SECTION) if isinstance(config, dict) else None
    if section is None:
        return {}
    if not isinstance(section, dict) or not all(str(k).startswith("DERMSEG_") for k in section):
        raise ValueError(f"{path}: '{APP_CONFIG_SECTION}' must map DERMSEG_* variable names to values")
    applied = {str(k): "" if v is None else str(v) for k, v in section.items() if str(k) not in environ}
    environ.update(applied)
    return applied


@dataclass(frozen=True)
class AppSettings:
    confidence_threshold: float
    edge_store: Optional[Path]  # DERMSEG_EDGE_STORE: the edge loop's sample store and review queue
    send_to: Optional[str]  # DERMSEG_SEND_TO: where results go, a PACS AE or a STOW-RS URL
    batch_size: int
    write_probability_seg: bool
    flip_tta: bool  # DERMSEG_FLIP_TTA: segment the mirror image too, confidence x flip agreement (2x the compute)
    model_precision: str = "int8"  # DERMSEG_MODEL_PRECISION: int8 (model_int8.onnx where there is one) or fp32

    @classmethod
    def from_env(cls, environ: Optional[Mapping[str, str]] = None) -> "AppSettings":
        """Read and check the settings; a bad value is a ValueError naming the variable."""
        environ = os.environ if environ is None else environ
        # one case per model call by default: on the CPU batching is slower per image (benchmarks/app_throughput.py)
        batch_raw = environ.get("DERMSEG_BATCH_SIZE", "1").strip() or "1"
        if not batch_raw.isdigit() or not 1 <= int(batch_raw) <= 256:
            raise ValueError(f"DERMSEG_BATCH_SIZE={batch_raw!r} must be a whole number from 1 to 256")
        probability = _flag(environ, "DERMSEG_PROBABILITY_SEG", True)
        flip_tta = _flag(environ, "DERMSEG_FLIP_TTA", False)
        precision = environ.get("DERMSEG_MODEL_PRECISION", "").strip().lower() or "int8"
        if precision not in PRECISIONS:
            raise ValueError(f"DERMSEG_MODEL_PRECISION={precision!r} must be one of {', '.join(PRECISIONS)}")
        return cls(
            confidence_threshold=threshold_from_env(environ),
            edge_store=Path(environ["DERMSEG_EDGE_STORE"]) if environ.get("DERMSEG_EDGE_STORE") else None,
            send_to=environ.get("DERMSEG_SEND_TO") or None,
            batch_size=int(batch_raw),
            write_probability_seg=probability,
            flip_tta=flip_tta,
            model_precision=precision,
        )

    def for_results(self) -> dict:
        """What results.json records about the run (no paths: they may name a site's layout)."""
        return {
            THRESHOLD_ENV: self.confidence_threshold,
            "edge_store": self.edge_store is not None,
            "send_to": self.send_to is not None,
            "flip_tta": self.flip_tta,
            "model_precision": self.model_precision,
        }


def _flag(environ: Mapping[str, str], name: str, default: bool) -> bool:
    raw = environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw not in ("0", "1", "true", "false", "yes", "no"):
        raise ValueError(f"{name}={raw!r} must be 1 or 0")
    return raw in ("1", "true", "yes")
