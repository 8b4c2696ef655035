# Copyright (c) the dermseg contributors. Apache-2.0.
"""Fixtures shared by the test modules."""

import os
import subprocess
from pathlib import Path

import pytest

from _app_helpers import REPO, make_tiny_model
from _orthanc import ORTHANC_BINARY, HarnessError, NetworkNamespace, find_dicomweb_plugin


@pytest.fixture(scope="module")
def tiny_model_path(tmp_path_factory):
    """A tiny random RIBCUNet exported as the bundle exports it (TorchScript with metadata.json), one per module:
    some modules write other exports beside it."""
    return make_tiny_model(tmp_path_factory.mktemp("model") / "tiny.ts")


@pytest.fixture(scope="module")
def namespace():
    """A loopback-only network namespace for this module's Orthancs and clients; deleted at the end."""
    if os.environ.get("DERMSEG_SKIP_PACS_TESTS") == "1":
        pytest.skip("DERMSEG_SKIP_PACS_TESTS=1: the Orthanc tests are skipped")
    if not Path(ORTHANC_BINARY).is_file() or find_dicomweb_plugin() is None:
        installer = subprocess.run(["sh", str(REPO / "tests" / "system_deps.sh")], capture_output=True, text=True)
        if installer.returncode != 0 or not Path(ORTHANC_BINARY).is_file() or find_dicomweb_plugin() is None:
            pytest.fail(
                "Orthanc (Debian packages orthanc, orthanc-dicomweb) is needed for the PACS tests and could not be "
                f"installed by tests/system_deps.sh: {installer.stderr.strip() or installer.stdout.strip()} "
                "(set DERMSEG_SKIP_PACS_TESTS=1 to skip these tests)"
            )
    try:
        created = NetworkNamespace.create()
    except HarnessError as error:
        pytest.fail(f"{error} (set DERMSEG_SKIP_PACS_TESTS=1 to skip these tests)")
    yield created
    created.delete()
