# Copyright (c) the dermseg contributors. Apache-2.0.
"""Federated fine-tuning of the bundle with NVIDIA FLARE: FedAvg over the edge sites; only weights travel.

    python training_bundle/scripts/federated.py simulate --site A.json --site B.json --rounds R --local-epochs E \\
        --work W [--version V] [bundle overrides, e.g. --learning_rate 0.0001]

runs the whole federation on this machine in FLARE's simulator, then exports the global model into ``W/models/``
as every version is exported (``model.pt``, ``model.ts`` by ``ckpt_export``, ``model.onnx`` by
``export_onnx.py``, ``model_int8.onnx`` by ``quantize_onnx.py``, and its ``metadata.json``), ready for
``python -m monai_app.edge --store DIR install-model W/models --gate``.  For a provisioned federation,
``job`` writes the same FLARE job to a folder (``nvflare job submit -j FOLDER``) and ``export`` exports the
global model the server saved.

The job is FLARE's own ``FedAvgRecipe`` (``nvflare.app_opt.pt.recipes``): its FedAvg controller, aggregator,
persistor and transport.  The server starts from the deployed weights (``--pretrained_checkpoint``, default
``models/model.pt``).  Each site (``--site [NAME=]DATALIST``, an edge store's datalist file) runs
``federated_client.py``: the bundle's own trainer on its own data, ``--local-epochs`` epochs a round, with the
shipped model's recipe (``train_recipe.json`` over ``train.json``; ``--no-recipe``: ``train.json`` alone).  Every site
result passes ``federated_privacy.WeightsOnly`` on its way out, which blocks anything but the network's weights
and records what was sent.  Other ``--key value`` arguments are bundle overrides, given to every site's
training and to the exports, as ``python -m monai.bundle run`` takes them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import sys
from typing import Any, Dict, List, Sequence, Tuple

import torch

SCRIPTS = os.path.dirname(os.path.abspath(__file__))
BUNDLE_ROOT = os.path.dirname(SCRIPTS)
sys.path.insert(0, BUNDLE_ROOT)
# FLARE copies the client script and the filter into the job as top-level modules found from here
sys.path.insert(0, SCRIPTS)

from federated_client import SETTINGS_FILE  # noqa: E402
from federated_privacy import AUDIT_FILE_NAME, STEPS_KEY, WeightsOnly  # noqa: E402
from networks.durable import atomic_write_bytes, atomic_write_with  # noqa: E402
from scripts._config import INFERENCE_CONFIG, RECIPE_CONFIG, TRAIN_CONFIG, load_config, parse_overrides  # noqa: E402

JOB_NAME = "dermseg_fedavg"
GLOBAL_MODEL_FILE = "FL_global_model.pt"  # what FLARE's PyTorch persistor saves after each round
CLIENT_SCRIPT = "federated_client.py"
_SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def _in_scripts():
    """FLARE resolves a relative client script from the working directory when it writes the job."""
    return contextlib.chdir(SCRIPTS)


def parse_sites(specs: Sequence[str]) -> Dict[str, str]:
    """``["A.json", "west=/data/b.json"]`` -> ``{"A": abs path, "west": abs path}`` (the name defaults to the stem)."""
    sites: Dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = os.path.splitext(os.path.basename(spec))[0], spec
        if not _SITE_NAME.fullmatch(name):
            raise ValueError(f"site name {name!r} (from {spec!r}): letters, digits, '_', '.', '-' only")
        if name in sites:
            raise ValueError(f"site {name!r} is given twice")
        sites[name] = os.path.abspath(path)
    if len(sites) < 2:
        raise ValueError("a federation needs at least two --site datalists")
    return sites


def bundle_overrides(extra: Sequence[str]) -> Dict[str, Any]:
    """``["--learning_rate", "0.0001", "--image_size=[128, 128]"]`` -> a dict, values as Python literals."""
    pairs, tokens = [], list(extra)
    while tokens:
        token = tokens.pop(0)
        if not token.startswith("--"):
            raise ValueError(f"unexpected argument {token!r}: bundle overrides are --key value")
        key, sep, value = token[2:].partition("=")
        if not sep:
            if not tokens:
                raise ValueError(f"bundle override --{key} has no value")
            value = tokens.pop(0)
        pairs.append(f"{key}={value}")
    overrides = parse_overrides(pairs)
    # the sites train in FLARE's own folders: a path given relative to here must not change its meaning there
    return {k: os.path.abspath(v) if isinstance(v, str) and v and os.path.exists(v) else v for k, v in overrides.items()}


def network_of(bundle_root: str, config_files: Sequence[str], overrides: Dict[str, Any]) -> Tuple[torch.nn.Module, dict]:
    """The bundle's ``network_def`` with these overrides, and its FLARE model config ``{"class_path", "args"}``."""
    parser = load_config(bundle_root, config_files, overrides)
    net = parser.get_parsed_content("network_def")
    args = {k: parser.get_parsed_content(f"network_def#{k}") for k in parser["network_def"] if not k.startswith("_")}
    return net, {"class_path": f"{type(net).__module__}.{type(net).__qualname__}", "args": args}


def build_recipe(sites: Dict[str, str], rounds: int, local_epochs: int, config_files: Sequence[str],
                 overrides: Dict[str, Any], initial_ckpt: str, site_root: str, settings_dir: str,
                 site_bundle_root: str = BUNDLE_ROOT, isic_dir: str | None = None):
    """The FLARE job: FedAvg of the bundle's network over ``sites``, each training with ``federated_client.py``."""
    from nvflare.app_opt.pt.recipes.fedavg import FedAvgRecipe
    from nvflare.recipe import set_per_site_config

    net, model = network_of(BUNDLE_ROOT, config_files, overrides)
    # the job carries its settings as a file: FLARE splits a script's arguments at whitespace
    os.makedirs(settings_dir, exist_ok=True)
    settings = os.path.join(settings_dir, SETTINGS_FILE)
    with open(settings, "w") as f:
        json.dump({"config_file": list(config_files), "overrides": overrides, "rounds": rounds, "local_epochs": local_epochs}, f, indent=1)
    recipe = FedAvgRecipe(
        name=JOB_NAME, model=model, initial_ckpt=os.path.abspath(initial_ckpt), min_clients=len(sites),
        # relative: FLARE copies the script into the job and runs that copy at each site (see _in_scripts)
        num_rounds=rounds, train_script=CLIENT_SCRIPT,
    )
    per_site = {}
    for name, datalist in sites.items():
        args = ["--bundle_root", site_bundle_root, "--datalist", datalist, "--work_dir", os.path.join(site_root, name)]
        args += ["--isic_dir", isic_dir] if isic_dir else []
        if any(re.search(r"\s", a) for a in args):
            raise ValueError(f"site {name}: FLARE splits a script's arguments at whitespace; no spaces in {args}")
        per_site[name] = {"train_args": " ".join(args)}
    set_per_site_config(recipe, per_site)
    recipe.add_client_file(settings)
    shapes = {k: list(v.shape) for k, v in net.state_dict().items()}
    recipe.add_client_output_filter(WeightsOnly(expected_shapes=shapes), tasks=["train"])
    return recipe


def site_records(job_workspace: str, sites: Sequence[str]) -> Dict[str, List[dict]]:
    """What each site recorded sending (``WeightsOnly``'s audit), one entry a round."""
    records: Dict[str, List[dict]] = {}
    for name in sites:
        path = os.path.join(job_workspace, name, "simulate_job", AUDIT_FILE_NAME)
        records[name] = []
        if os.path.isfile(path):
            with open(path) as f:
                records[name] = [json.loads(line) for line in f if line.strip()]
    return records


def new_metadata(base: dict, version: str, rounds: int, local_epochs: int, sites: Dict[str, List[dict]] | Sequence[str],
                 overrides: Dict[str, Any]) -> dict:
    """The deployed version's metadata under a new version, with a changelog line and a ``federated`` field."""
    import nvflare

    names = list(sites)
    changes = ", ".join(f"{k}={v}" for k, v in overrides.items() if k != "pretrained_checkpoint") or "the bundle's settings"
    line = (f"{base['version']} fine-tuned by FedAvg over {len(names)} sites ({', '.join(names)}) with NVIDIA FLARE "
            f"{nvflare.__version__}: {rounds} rounds x {local_epochs} local epochs ({changes}); only weights left the sites")
    federated = {"algorithm": "FedAvg", "framework": f"NVIDIA FLARE {nvflare.__version__}", "base_version": base["version"],
                 "rounds": rounds, "local_epochs": local_epochs, "sites": names}
    if isinstance(sites, dict):
        federated["steps"] = {name: [int(r["meta"].get(STEPS_KEY, 0)) for r in recs] for name, recs in sites.items()}
    return {**base, "version": version, "changelog": {version: line, **base.get("changelog", {})}, "federated": federated}


def export_global_model(global_model: str, out_dir: str, metadata: dict, config_files: Sequence[str],
                        overrides: Dict[str, Any], calibration_images: int = 64, bundle_root: str = BUNDLE_ROOT) -> None:
    """``model.pt`` (a plain state_dict), ``model.ts``, ``model.onnx``, ``model_int8.onnx`` and ``metadata.json``
    in ``out_dir``, by the same functions as the bundle's export commands."""
    from monai.bundle import ckpt_export
    from scripts.export_onnx import export_onnx
    from scripts.quantize_onnx import quantize_onnx

    os.makedirs(out_dir, exist_ok=True)
    net, _ = network_of(bundle_root, config_files, overrides)
    # FLARE's PyTorch persistor saves {"model": state_dict, "meta_props": ..., "train_conf": ...}
    saved = torch.load(global_model, map_location="cpu", weights_only=True)
    net.load_state_dict({k: torch.as_tensor(v) for k, v in saved.get("model", saved).items()})  # strict
    model_pt, meta_file = os.path.join(out_dir, "model.pt"), os.path.join(out_dir, "metadata.json")
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    atomic_write_with(model_pt, lambda tmp: torch.save(state, tmp))
    atomic_write_bytes(meta_file, (json.dumps(metadata, indent=4) + "\n").encode())

    exported = [f if os.path.isabs(f) else os.path.join(bundle_root, f) for f in (*config_files, INFERENCE_CONFIG)]
    ckpt_export(net_id="network_def", filepath=os.path.join(out_dir, "model.ts"), ckpt_file=model_pt, meta_file=meta_file,
                config_file=exported, bundle_root=bundle_root, **overrides)
    onnx_file = export_onnx(bundle_root, os.path.join(out_dir, "model.onnx"), model_pt, exported, overrides, meta_file=meta_file)
    # int8 calibration on the cloud's own ISIC training images (the bundle's dataset_dir), never a site's
    train = load_config(bundle_root, config_files, overrides)
    quantize_onnx(onnx_file, os.path.join(out_dir, "model_int8.onnx"), train.get_parsed_content("dataset_dir"),
                  train.get_parsed_content("datalist_file"), calibration_images)


def _recipe_flag(ap: argparse.ArgumentParser) -> None:
    # the shipped model was trained with the modern recipe, whose layer also gives the network its colour constancy
    ap.add_argument("--recipe", action=argparse.BooleanOptionalAction, default=True,
                    help="layer configs/train_recipe.json over train.json (default); --no-recipe: train.json alone")


def _common(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--site", action="append", required=True, metavar="[NAME=]DATALIST",
                    help="a site's datalist (python -m monai_app.edge --store DIR datalist FILE); repeat per site")
    ap.add_argument("--rounds", type=int, required=True)
    ap.add_argument("--local-epochs", dest="local_epochs", type=int, default=1)
    _recipe_flag(ap)
    ap.add_argument("--isic_dir", default=None, help="each site also trains on its local ISIC copy here (as extra_datalists)")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    sim = sub.add_parser("simulate", help="run the federation in FLARE's simulator on this machine, then export")
    _common(sim)
    sim.add_argument("--work", required=True, help="W: FLARE's workspace W/fl, the sites' folders W/sites, the exports W/models")
    job = sub.add_parser("job", help="write the FLARE job for a provisioned federation (nvflare job submit -j FOLDER)")
    _common(job)
    job.add_argument("--job_dir", required=True)
    job.add_argument("--site_work_dir", default="federated_work", help="each site's local folder for its training")
    job.add_argument("--site_bundle_root", default=BUNDLE_ROOT, help="where the bundle is at the sites")
    exp = sub.add_parser("export", help="export the global model a FLARE server saved")
    exp.add_argument("--global_model", required=True, help=f"the server's {GLOBAL_MODEL_FILE}")
    exp.add_argument("--rounds", type=int, required=True)
    exp.add_argument("--local-epochs", dest="local_epochs", type=int, default=1)
    exp.add_argument("--sites", nargs="+", required=True, help="the sites' names, for the metadata")
    _recipe_flag(exp)
    for p in (sim, exp):
        p.add_argument("--out", default=None, help="the model folder (default W/models; required for export)")
        p.add_argument("--version", default=None, help="the new version (default <deployed>+fedavg.<rounds>x<local epochs>)")
        p.add_argument("--calibration_images", type=int, default=64, help="ISIC training images for the int8 calibration")
    args, extra = ap.parse_known_args(argv)
    overrides = bundle_overrides(extra)
    config_files = [TRAIN_CONFIG] + ([RECIPE_CONFIG] if args.recipe else [])
    if args.recipe:
        # the recipe's progressive resizing is for training from scratch: a fine-tune trains at the model's size
        overrides.setdefault("train_sizes", "$[[1, @image_size]]")
    initial = overrides.pop("pretrained_checkpoint", os.path.join(BUNDLE_ROOT, "models", "model.pt"))
    # the deployed version's metadata, with any _meta_#... overrides (as ckpt_export applies them)
    base = load_config(BUNDLE_ROOT, config_files, overrides).get("_meta_")
    version = getattr(args, "version", None) or f"{base['version']}+fedavg.{args.rounds}x{args.local_epochs}"

    if args.command == "export":
        if not args.out:
            ap.error("export needs --out")
        metadata = new_metadata(base, version, args.rounds, args.local_epochs, args.sites, overrides)
        export_global_model(args.global_model, args.out, metadata, config_files, overrides, args.calibration_images)
        print(f"exported {version} to {args.out}")
        return 0

    sites = parse_sites(args.site)
    if args.recipe and "warmup_epochs" not in overrides:
        # the recipe warms up over its first epoch(s); a federation of no more epochs than that has no room for it
        if args.rounds * args.local_epochs <= load_config(BUNDLE_ROOT, config_files).get("warmup_epochs", 0):
            overrides["warmup_epochs"] = 0
    if args.command == "job":
        job_dir = os.path.abspath(args.job_dir)
        with _in_scripts():
            recipe = build_recipe(sites, args.rounds, args.local_epochs, config_files, overrides, initial,
                                  args.site_work_dir, os.path.join(job_dir, ".settings"), args.site_bundle_root, args.isic_dir)
            recipe.export(job_dir=job_dir)
        print(f"wrote the FLARE job to {job_dir}: nvflare job submit -j {os.path.join(job_dir, JOB_NAME)}")
        return 0

    from nvflare.recipe import SimEnv

    work = os.path.abspath(args.work)
    for folder in (os.path.join(work, "fl", JOB_NAME), os.path.join(work, "sites")):
        shutil.rmtree(folder, ignore_errors=True)  # a rerun starts afresh: no site resumes an old local run
    missing = [p for p in sites.values() if not os.path.isfile(p)]
    if missing:
        raise SystemExit(f"no such datalist: {', '.join(missing)}")
    # every site at once: with fewer simulator threads than sites FLARE swaps sites in and out, restarting their
    # training script (and so the bundle's trainer and optimizer) every round
    env = SimEnv(clients=list(sites), num_threads=len(sites), workspace_root=os.path.join(work, "fl"))
    with _in_scripts():
        recipe = build_recipe(sites, args.rounds, args.local_epochs, config_files, overrides, initial,
                              os.path.join(work, "sites"), os.path.join(work, "job_settings"), isic_dir=args.isic_dir)
        job_workspace = recipe.run(env).get_result()
    records = site_records(job_workspace, list(sites))
    silent = [name for name, recs in records.items() if len(recs) != args.rounds]
    if silent:
        raise SystemExit(f"sites that did not send weights every round: {silent}; see {job_workspace}/<site>/log.txt")
    metadata = new_metadata(base, version, args.rounds, args.local_epochs, records, overrides)
    out = args.out or os.path.join(work, "models")
    global_model = os.path.join(job_workspace, "server", "simulate_job", "app_server", GLOBAL_MODEL_FILE)
    export_global_model(global_model, out, metadata, config_files, overrides, args.calibration_images)
    with open(os.path.join(work, "federated.json"), "w") as f:
        json.dump({"version": version, "sites": sites, "sent": records, "global_model": global_model, "models": out}, f, indent=1)
    print(f"exported {version} to {out}: install with python -m monai_app.edge --store DIR install-model {out} --gate")
    return 0


if __name__ == "__main__":
    sys.exit(main())
