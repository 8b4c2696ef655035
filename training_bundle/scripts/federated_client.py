# Copyright (c) the dermseg contributors. Apache-2.0.
"""One site's side of the federated fine-tune: the bundle's own trainer, driven by NVIDIA FLARE's Client API.

FLARE runs this script at each site (``scripts/federated.py`` puts it in the job).  It builds the bundle's training
workflow (``monai.bundle.ConfigWorkflow`` of ``train.json``, with ``train_recipe.json`` where the job layers it,
and the job's overrides) on the site's own datalist, then each round: receives the global weights
(``flare.receive()``), loads them into the network, trains ``local_epochs`` epochs with the bundle's trainer,
optimizer, augmentation and validation, and sends back the network's ``state_dict`` and the number of steps it
trained (``flare.send()``), which FedAvg weighs it by.  The images and masks are read here and stay here.

The site's data is its edge datalist (``python -m monai_app.edge --store DIR datalist site.json``: absolute paths
under ``"training"``), read through the bundle's own settings: as ``datalist_file`` alone, or, with
``--isic_dir`` (a local copy of ISIC 2018), appended to ISIC's training split as ``extra_datalists``, exactly
as the cloud's fine-tune appends the edges' files.  Validation runs on the datalist's ``"validation"`` cases
where it has some, else on its training cases (ISIC's validation split with ``--isic_dir``); it feeds the
bundle's training log and learning-rate schedule at the site and is never sent.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any, Dict, List, Sequence

import nvflare.client as flare
import torch
from monai.bundle import ConfigWorkflow

SETTINGS_FILE = "federated_settings.json"
STEPS_KEY = "NUM_STEPS_CURRENT_ROUND"


def site_overrides(settings: Dict[str, Any], datalist: str, work_dir: str, isic_dir: str | None) -> Dict[str, Any]:
    """The bundle overrides of this site's training: the job's, then the site's data and folders."""
    with open(datalist) as f:
        has_validation = bool(json.load(f).get("validation"))
    overrides = dict(settings["overrides"])
    overrides.update(
        {
            # the whole federation is one schedule: the modern recipe's cosine runs over rounds x local epochs
            "epochs": int(settings["rounds"]) * int(settings["local_epochs"]),
            "ckpt_dir": os.path.join(work_dir, "models"),
            "output_dir": os.path.join(work_dir, "eval"),
            # the global weights arrive from the server every round: no local checkpoint is loaded
            "resume": False,
            "pretrained_checkpoint": "",
        }
    )
    if isic_dir:
        overrides.update({"dataset_dir": isic_dir, "extra_datalists": [datalist]})
    else:
        overrides.update({"datalist_file": datalist, "dataset_dir": os.path.dirname(os.path.abspath(datalist)), "extra_datalists": []})
        if not has_validation:
            overrides["validate#datalist"] = "$@train#datalist"
    return overrides


def build_workflow(bundle_root: str, config_files: Sequence[str], overrides: Dict[str, Any]) -> ConfigWorkflow:
    files: List[str] = [f if os.path.isabs(f) else os.path.join(bundle_root, f) for f in config_files]
    workflow = ConfigWorkflow(
        config_file=files,
        meta_file=os.path.join(bundle_root, "configs", "metadata.json"),
        # the bundle's logging.conf would reconfigure logging in FLARE's own process and silence its loggers
        logging_file=False,
        workflow_type="train",
        bundle_root=bundle_root,
        **overrides,
    )
    workflow.initialize()
    return workflow


def main(argv: Sequence[str] | None = None) -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle_root", required=True, help="this site's copy of the bundle")
    ap.add_argument("--datalist", required=True, help="this site's datalist (the edge store's datalist file)")
    ap.add_argument("--work_dir", required=True, help="this site's folder for the local training's log and checkpoints")
    ap.add_argument("--isic_dir", default=None, help="a local copy of ISIC 2018: train on its training split too")
    ap.add_argument("--settings", default=os.path.join(here, SETTINGS_FILE), help="the job's settings (shipped with it)")
    args = ap.parse_args(argv)
    with open(args.settings) as f:
        settings = json.load(f)

    workflow = build_workflow(args.bundle_root, settings["config_file"], site_overrides(settings, args.datalist, args.work_dir, args.isic_dir))
    parser = workflow.parser
    trainer = workflow.trainer
    network = parser.get_parsed_content("network")
    # what the bundle's `run` attaches besides its checkpoint loaders and savers: the per-epoch resizing, the EMA
    for handler in parser.get_parsed_content("recipe_handlers"):
        handler.attach(trainer)
    ema = parser.get_parsed_content("ema") if "ema" in parser else None
    evaluator = parser.get_parsed_content("validate#evaluator")
    local_epochs = int(settings["local_epochs"])

    flare.init()
    site = flare.get_site_name()
    while flare.is_running():
        received = flare.receive()
        if received is None:
            break
        # strict: the global model must be exactly this network
        network.load_state_dict({k: torch.as_tensor(v) for k, v in received.params.items()})
        if ema is not None:
            ema.n_averaged.zero_()  # the recipe's EMA restarts from the global weights (its first update copies them)
        # continue the same ignite run for local_epochs more epochs: optimizer and schedule carry over the rounds
        start = trainer.state.iteration
        trainer.state.max_epochs = trainer.state.epoch + local_epochs
        trainer.run()
        steps = trainer.state.iteration - start
        local = evaluator.state.metrics.get("val_mean_jaccard")
        print(f"{site}: round {received.current_round}: {steps} steps, epoch {trainer.state.epoch}, local validation mean Jaccard {local}")
        weights = {k: v.detach().cpu() for k, v in network.state_dict().items()}
        flare.send(flare.FLModel(params=weights, params_type=flare.ParamsType.FULL, meta={STEPS_KEY: steps}))
    workflow.finalize()


if __name__ == "__main__":
    main()
