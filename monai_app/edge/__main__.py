# Copyright (c) the dermseg contributors. Apache-2.0.
"""``python -m monai_app.edge --store DIR <command>``: the edge store for the operator and the reviewer.

Commands: ``status``, ``review-export OUTDIR``, ``import-corrections DIR``, ``datalist OUT.json``,
``install-model PATH``, ``rollback``, ``verify``.  ``--store`` defaults to ``$DERMSEG_EDGE_STORE``.

Exit status: 0 done; 1 import-corrections found bad files (the good ones were imported) or verify found
problems; 2 the command could not run (no store, bad argument, refused model).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import List, Optional

from ..settings import edge_store_from_env
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
    datalist = commands.add_parser("datalist", help="write a MONAI datalist of accepted and corrected samples")
    datalist.add_argument("out_json")
    install = commands.add_parser("install-model", help="install an exported model (model.ts, or a folder with model.ts and model.onnx) and make it active")
    install.add_argument("path")
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

            report = import_corrections(store, args.folder)
            for path, uid in report.imported:
                print(f"imported {path} -> case {uid}")
            for path, uid in report.unchanged:
                print(f"unchanged {path}: case {uid} was already corrected with this mask")
            for error in report.failed:
                print(f"error: {error}", file=sys.stderr)
            print(json.dumps(report.summary()))
            return 0 if report.ok else 1
        elif args.command == "datalist":
            datalist = store.write_datalist(args.out_json)
            print(f"{len(datalist['training'])} sample(s) written to {os.path.abspath(args.out_json)}")
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


def main(argv: Optional[List[str]] = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    args = _parser().parse_args(argv)
    if not args.store:
        print("error: no store: give --store DIR or set DERMSEG_EDGE_STORE", file=sys.stderr)
        return 2
    try:
        return _run(args)
    except (EdgeStoreError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
