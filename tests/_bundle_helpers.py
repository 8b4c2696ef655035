# Copyright (c) the dermseg contributors. Apache-2.0.
"""Shared plumbing of the training bundle's tests (``tests/test_bundle*.py``).

Every test works on a throw-away copy of ``training_bundle/`` (so nothing lands in the repository's
``models/`` or ``eval/``) and trains on ``tests/data/isic_sample`` (16 real ISIC cases at 64x64) at 32x32 px,
which keeps a full epoch under a second on two CPU cores.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE_ROOT = REPO_ROOT / "training_bundle"
SAMPLE_DIR = REPO_ROOT / "tests" / "data" / "isic_sample"
SAMPLE_DATALIST = SAMPLE_DIR / "datalist.json"
# the full 256 px copy lives beside the repository, in the workspace's shared folder, when it is there at all
SHARED_ISIC_256 = REPO_ROOT.parent / "shared" / "data" / "isic2018_task1_256"
PYTHON = sys.executable
TEST_IMAGE_SIZE = [32, 32]
# evaluate.json and inference.json are layered over train.json (which defines network_def and the model's settings)
EVALUATE_CONFIGS = ["train.json", "evaluate.json"]
INFERENCE_CONFIGS = ["train.json", "inference.json"]


def copy_bundle(dst: Path) -> Path:
    """A clean copy of the bundle (configs, scripts, docs, LICENSE; no weights, no outputs) at ``dst``."""
    shutil.copytree(BUNDLE_ROOT, dst, ignore=shutil.ignore_patterns("*.pt", "*.ts", "*.onnx", "eval", "runs", "__pycache__"))
    return dst


def sample_overrides(bundle: Path, **extra: Any) -> Dict[str, Any]:
    """Overrides that point a config at the test sample, small and single-process."""
    return {
        "bundle_root": str(bundle),
        "dataset_dir": str(SAMPLE_DIR),
        "datalist_file": str(SAMPLE_DATALIST),
        "image_size": TEST_IMAGE_SIZE,
        "num_workers": 0,
        **extra,
    }


def train_overrides(bundle: Path, **extra: Any) -> Dict[str, Any]:
    return sample_overrides(bundle, **{"epochs": 2, "batch_size": 4, **extra})


def cli_args(overrides: Dict[str, Any]) -> list:
    """``--key value`` pairs as ``python -m monai.bundle`` reads them (values as Python literals)."""
    args = []
    for key, value in overrides.items():
        args += [f"--{key}", value if isinstance(value, str) else repr(value)]
    return args


@contextlib.contextmanager
def torch_threads(n: int = 1) -> Iterator[None]:
    """Run torch with ``n`` intra-op threads, then restore the setting.

    The tests run on two shared cores: two OpenMP threads per process next to other busy processes spin against
    each other and make a one-second epoch take a minute.  One thread is also the fastest for these tiny inputs.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_cli(args: Sequence[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run a command (default: the project's Python) from ``cwd``, single-threaded like the in-process tests;
    fail with its output if it fails."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run([str(a) for a in args], cwd=str(cwd), env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}")
    return proc


def config_files(bundle: Path, configs: Sequence[str]) -> str:
    """The bundle copy's ``configs``, layered in this order, as ``python -m monai.bundle --config_file`` takes a list."""
    return repr([str(bundle / "configs" / c) for c in configs])


def config_workflow(bundle: Path, configs: Sequence[str], workflow_type: str, **overrides: Any):
    """A ``monai.bundle.ConfigWorkflow`` of the bundle copy's ``configs`` (layered in this order) with the given
    overrides."""
    from monai.bundle import ConfigWorkflow

    return ConfigWorkflow(
        config_file=[str(bundle / "configs" / c) for c in configs],
        meta_file=str(bundle / "configs" / "metadata.json"),
        logging_file=str(bundle / "configs" / "logging.conf"),
        workflow_type=workflow_type,
        **overrides,
    )
