"""The model the app serves by default: its exports are the same model, and the bundle's metadata names it."""

import json

import numpy as np
import torch

from _app_helpers import REPO, isic_rgb
from networks.preprocessing import mask_cleanup_of, rgb_to_model_input
from operators.model import OnnxRuntimeModel, load_model, load_torchscript_model
from monai_app.settings import DEFAULT_MODEL_PATH

MODELS = REPO / "training_bundle" / "models"


def test_the_default_model_is_the_bundles_int8_export_served_by_onnx_runtime_on_cpu():
    metadata = json.loads((REPO / "training_bundle" / "configs" / "metadata.json").read_text())
    model, info = load_model(DEFAULT_MODEL_PATH)
    assert isinstance(model, OnnxRuntimeModel)
    assert (info.name, info.version, info.precision) == (metadata["name"], metadata["version"], "int8")
    assert info.mask_cleanup == mask_cleanup_of(metadata)  # served with the clean-up it was scored with
    assert load_model(DEFAULT_MODEL_PATH, precision="fp32")[1].precision == "fp32"


def test_model_int8_is_model_onnx_quantized():
    """A stale int8 model beside a re-exported float model would serve old weights: their masks must agree."""
    float_model, float_info = load_model(MODELS / "model.onnx")
    int8_model, int8_info = load_model(MODELS / "model_int8.onnx")
    assert (int8_info.name, int8_info.version, int8_info.input_size, int8_info.mask_cleanup) == (
        float_info.name, float_info.version, float_info.input_size, float_info.mask_cleanup)
    inputs = torch.stack([rgb_to_model_input(isic_rgb(f"ISIC_000000{i}", None), float_info.input_size) for i in range(3)])
    agreement = ((float_model(inputs).numpy() > 0) == (int8_model(inputs).numpy() > 0)).mean()
    assert agreement > 0.98


def test_model_onnx_and_model_ts_are_the_same_weights():
    """A stale model.onnx beside a retrained model.ts would serve old weights on the CPU: both must agree."""
    onnx_model, onnx_info = load_model(MODELS / "model.onnx")
    script_model, script_info = load_torchscript_model(MODELS / "model.ts")
    assert onnx_info == script_info
    inputs = torch.stack([rgb_to_model_input(isic_rgb(f"ISIC_000000{i}", None), onnx_info.input_size) for i in range(3)])
    with torch.inference_mode():
        expected = script_model(inputs).numpy()
    got = onnx_model(inputs).numpy()
    assert np.abs(got - expected).max() < 1e-3
    assert ((got > 0) == (expected > 0)).mean() > 0.9999
