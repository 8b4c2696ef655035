# Copyright (c) the dermseg contributors. Apache-2.0.
"""``multi_gpu_train.json`` under ``torchrun`` with two CPU processes (gloo), on the 64 px ISIC sample."""

from __future__ import annotations

import csv
import re
from collections import Counter

import pytest
import torch

from _bundle_helpers import PYTHON, cli_args, copy_bundle, run_cli, train_overrides



@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch without torch.distributed")
def test_torchrun_two_cpu_processes(tmp_path):
    bundle = copy_bundle(tmp_path / "bundle")
    configs = f"['{bundle / 'configs' / 'train.json'}','{bundle / 'configs' / 'multi_gpu_train.json'}']"
    # patience 0: the LR drops after the first epoch without improvement, so a rank that steps differently shows
    overrides = train_overrides(bundle, epochs=2, batch_size=2, **{"lr_scheduler#patience": 0})
    proc = run_cli(
        [
            PYTHON, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2",
            "-m", "monai.bundle", "run", "--config_file", configs, *cli_args(overrides),
        ],
        cwd=tmp_path,
        timeout=400,
    )
    output = proc.stdout + proc.stderr

    # every rank steps ReduceLROnPlateau with the same, all-gathered validation Jaccard: each learning rate
    # printed after an epoch is printed by both ranks
    lrs = Counter(re.findall(r"Current learning rate: ([0-9.e-]+)", output))
    assert sum(lrs.values()) == 2 * 2, output[-4000:]
    assert all(n % 2 == 0 for n in lrs.values()), lrs

    # rank 0 alone writes: one log with one row per epoch, the best model and the resume checkpoints
    with open(bundle / "eval" / "train_log.csv", newline="") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1, 2]
    models = bundle / "models"
    assert (models / "model.pt").is_file()
    assert sorted(p.name for p in models.glob("checkpoint_epoch=*.pt")) == ["checkpoint_epoch=1.pt", "checkpoint_epoch=2.pt"]
    state = torch.load(models / "model.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in state), "DDP wrapper leaked into the saved weights"
    assert output.count("Saved checkpoint at epoch: 2") == 1
