# Copyright (c) the dermseg contributors. Apache-2.0.
"""Fixtures shared by the test modules."""

import pytest

from _app_helpers import make_tiny_model


@pytest.fixture(scope="module")
def tiny_model_path(tmp_path_factory):
    """A tiny random RIBCUNet exported as the bundle exports it (TorchScript with metadata.json), one per module:
    some modules write other exports beside it."""
    return make_tiny_model(tmp_path_factory.mktemp("model") / "tiny.ts")
