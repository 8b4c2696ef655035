# Copyright (c) the dermseg contributors. Apache-2.0.
"""``python -m monai_app.edge --store DIR <command>``: the edge store for the operator and the reviewer.

Commands: ``status``, ``review-export OUTDIR``, ``import-corrections DIR``, ``pull-corrections [URL]``,
``datalist OUT.json``, ``install-model PATH [--gate [--margin M]]``, ``rollback``, ``verify``.  ``--store``
defaults to ``$DERMSEG_EDGE_STORE``; ``pull-corrections``' URL to ``$DERMSEG_REVIEW_PULL_FROM``.

Exit status: 0 done; 1 import-/pull-corrections found bad files (the good ones were imported) or verify found
problems; 2 the command could not run (no store, bad argument, refused model, server unreachable, the gate
refused the model).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import List, Optional

from ..pacs import DicomWebTarget, parse_target
from ..settings import (
    ENV_REVIEW_PULL_FROM,
    edge_store_from_env,
    model_precision_from_env,
    review_pull_from_env,
    send_options_from_env,
)
from .store import EdgeStore, EdgeStoreError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m monai_app.edge", description="The edge store of the skin-lesion app, for its operator and the reviewer."
    )
    parser.add_argument(
        "--store", default=edge_store_from_env(),
        help="the edge store folder (default: $DERMSEG_EDGE_STORE)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("status", help='one JSON line: {"accepted", "review" (waiting), "corrected", "model_version"}')
    export = commands.add_parser("review-export", help="write the review package of the waiting cases")
    export.add_argument("outdir", help="a new (or empty) folder")
    corrections = commands.add_parser("import-corrections", help="import <SOPInstanceUID>.png masks and DICOM-SEGs")
    corrections.add_argument("folder")
    pull = commands.add_parser("pull-corrections", help="fetch the reviewers' DICOM-SEGs of waiting cases by DICOMweb and import them")
    pull.add_argument("url", nargs="?", help=f"the DICOMweb service root (default: ${ENV_REVIEW_PULL_FROM}); no password here")
    datalist = commands.add_parser("datalist", help="write a MONAI datalist of accepted and corrected samples")
    datalist.add_argument("out_json")
    install = commands.add_parser("install-model", help="install an exported model (model.ts, or a folder with model.ts and model.onnx) and make it active")
    install.add_argument("path")
    install.add_argument("--gate", action="store_true", help="install only if it scores no worse than the active model on the corrected cases")
    install.add_argument("--margin", type=float, default=0.02, help="mean Jaccard the new model may lose and still pass (default 0.02)")
    commands.add_parser("rollback", help="make the previously active model active again")
    commands.add_parser("verify", help="check that every stored file is present and unchanged")
    return parser


def _run(args) -> int:
    # Only installing a model may create a store; every other command on a missing store is an error.
    with EdgeStore(args.store, create=args.command == "install-model") as store:
        if args.command == "status":
            print(json.dumps(store.status()))
        elif args.command == "review-export":
            manifest = store.export_review(args.outdir)
            print(f"{len(manifest['cases'])} case(s) waiting for review exported to {os.path.abspath(args.outdir)}")
        elif args.command == "import-corrections":
            from .corrections import import_corrections

            return _print_report(import_corrections(store, args.folder))
        elif args.command == "pull-corrections":
            return _pull(store, args.url)
        elif args.command == "datalist":
            datalist = store.write_datalist(args.out_json)
            print(f"{len(datalist['training'])} sample(s) written to {os.path.abspath(args.out_json)}")
        elif args.command == "install-model" and args.gate:
            from .model_gate import install_gated

            scores, installed = install_gated(store, args.path, args.margin, model_precision_from_env())
            print(json.dumps(scores))
            if not installed:
                print(f"error: {scores['verdict']}", file=sys.stderr)
                return 2
            print(f"model {scores['new']['version']} installed and active: {store.active_model_path()}")
        elif args.command == "install-model":
            version = store.install_model(args.path)
            print(f"model {version} installed and active: {store.active_model_path()}")
        elif args.command == "rollback":
            version = store.rollback_model()
            print(f"model {version} active again: {store.active_model_path()}")
        elif args.command == "verify":
            problems = store.verify()
            for problem in problems:
                print(f"error: {problem}", file=sys.stderr)
            return 1 if problems else 0
    return 0


def _print_report(report) -> int:
    """The lines of an import (``import-corrections``, ``pull-corrections``), the summary JSON last."""
    for path, uid in report.imported:
        print(f"imported {path} -> case {uid}")
    for path, uid in report.unchanged:
        print(f"unchanged {path}: case {uid} was already corrected with this mask")
    for error in report.failed:
        print(f"error: {error}", file=sys.stderr)
    print(json.dumps(report.summary()))
    return 0 if report.ok else 1


def _pull(store: EdgeStore, url: Optional[str]) -> int:
    """``pull-corrections``: a URL on the command line must carry no password (every user can read it)."""
    import requests

    from .pacs_pull import dicomweb_client_for, pull_corrections

    target = review_pull_from_env() if url is None else parse_target(url)
    if target is None:
        raise ValueError(f"no DICOMweb server: give its URL or set {ENV_REVIEW_PULL_FROM}")
    if not isinstance(target, DicomWebTarget):
        raise ValueError(f"{target.label}: corrections are pulled by DICOMweb (http:// or https://)")
    if url is not None and target.password is not None:
        raise ValueError(f"no password on the command line (every user can read it): set {ENV_REVIEW_PULL_FROM}")
    options = send_options_from_env()
    client = dicomweb_client_for(target, token=options.dicomweb_token, timeout=options.timeout)
    try:
        pulled = pull_corrections(store, client)
    except requests.RequestException as exc:
        raise OSError(f"DICOMweb server {target.label}: {type(exc).__name__}: {exc}") from None
    print(f"{pulled.studies} study(ies) of waiting cases asked; {pulled.found} SEG(s) found, {pulled.own} of them ours (left alone)")
    return _print_report(pulled.report)


def main(argv: Optional[List[str]] = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    args = _parser().parse_args(argv)
    if not args.store:
        print("error: no store: give --store DIR or set DERMSEG_EDGE_STORE", file=sys.stderr)
        return 2
    try:
        return _run(args)
    except (EdgeStoreError, OSError, ValueError) as exc:  # a TargetError is a ValueError
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
