# Copyright (c) the dermseg contributors. Apache-2.0.
"""Shared command-line plumbing of the bundle's scripts: reading configs with overrides like ``monai.bundle``.

``evaluate.json`` and ``inference.json`` are layered over ``train.json``, which alone defines ``network_def`` and
the model's settings: ``EVALUATE_CONFIGS`` and ``INFERENCE_CONFIGS`` are those layers, in order.  A model trained
with ``train_recipe.json`` needs that file between the two, for the recipe's network settings (its
``colour_constancy``): ``configs/train.json configs/train_recipe.json configs/evaluate.json``.
"""

from __future__ import annotations

import ast
import os
from typing import Any, Dict, List, Sequence

from monai.bundle import ConfigParser

__all__ = [
    "TRAIN_CONFIG",
    "RECIPE_CONFIG",
    "EVALUATE_CONFIG",
    "INFERENCE_CONFIG",
    "EVALUATE_CONFIGS",
    "INFERENCE_CONFIGS",
    "parse_overrides",
    "load_config",
]

TRAIN_CONFIG = "configs/train.json"
RECIPE_CONFIG = "configs/train_recipe.json"
EVALUATE_CONFIG = "configs/evaluate.json"
INFERENCE_CONFIG = "configs/inference.json"
EVALUATE_CONFIGS = (TRAIN_CONFIG, EVALUATE_CONFIG)
INFERENCE_CONFIGS = (TRAIN_CONFIG, INFERENCE_CONFIG)


def parse_overrides(pairs: Sequence[str] | None) -> Dict[str, Any]:
    """``["channels=[64,128,256,512,1024]", "bi_convgru=False"]`` -> a dict; values are Python literals when they
    parse as one (as ``monai.bundle``'s command line does), strings otherwise."""
    out: Dict[str, Any] = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"override {pair!r} is not KEY=VALUE")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def load_config(bundle_root: str, config_files: Sequence[str], overrides: Dict[str, Any] | None = None) -> ConfigParser:
    """A parser of ``config_files`` (relative to ``bundle_root`` unless absolute) plus ``configs/metadata.json``."""
    files: List[str] = [f if os.path.isabs(f) else os.path.join(bundle_root, f) for f in config_files]
    parser = ConfigParser()
    parser.read_config(files)
    parser.read_meta(os.path.join(bundle_root, "configs", "metadata.json"))
    parser.update({"bundle_root": bundle_root, **(overrides or {})})
    return parser
