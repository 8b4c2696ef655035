# Copyright (c) the dermseg contributors. Apache-2.0.
"""``multi_gpu_train.json`` under ``torchrun`` with two CPU processes (gloo), on the 64 px ISIC sample."""

from __future__ import annotations

import csv
import re

import pytest
import torch

from _bundle_helpers import PYTHON, cli_args, copy_bundle, run_cli, train_overrides



@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch without torch.distributed")
def test_torchrun_two_cpu_processes(tmp_path):
    bundle = copy_bundle(tmp_path / "bundle")
    configs = f"['{bundle / 'configs' / 'train.json'}','{bundle / 'configs' / 'multi_gpu_train.json'}']"
    # patience 0: the LR drops after the first epoch without improvement, so a rank that steps differently shows
    overrides = train_overrides(bundle, epochs=2, batch_size=2, **{"lr_scheduler#patience": 0})
    logs = tmp_path / "logs"
    run_cli(
        [
            PYTHON, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2",
            "--log-dir", logs, "--redirects", "3",  # one stdout/stderr file per rank: no interleaved lines
            "-m", "monai.bundle", "run", "--config_file", configs, *cli_args(overrides),
        ],
        cwd=tmp_path,
        timeout=400,
    )
    per_rank = {}
    for rank in ("0", "1"):
        files = sorted(logs.glob(f"**/attempt_0/{rank}/std*.log"))
        assert files, f"no log of rank {rank} under {logs}"
        per_rank[rank] = "".join(f.read_text() for f in files)

    # every rank steps ReduceLROnPlateau with the same, all-gathered validation Jaccard: the same learning rates
    lrs = {rank: re.findall(r"Current learning rate: ([0-9.e-]+)", text) for rank, text in per_rank.items()}
    assert len(lrs["0"]) == 2 and lrs["0"] == lrs["1"], lrs
    assert per_rank["0"].count("Saved checkpoint at epoch: 2") == 1 and "Saved checkpoint" not in per_rank["1"]

    # rank 0 alone writes: one log with one row per epoch, the best model and the resume checkpoints
    with open(bundle / "eval" / "train_log.csv", newline="") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1, 2]
    models = bundle / "models"
    assert (models / "model.pt").is_file()
    assert sorted(p.name for p in models.glob("checkpoint_epoch=*.pt")) == ["checkpoint_epoch=1.pt", "checkpoint_epoch=2.pt"]
    state = torch.load(models / "model.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in state), "DDP wrapper leaked into the saved weights"
