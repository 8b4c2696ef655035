# Copyright (c) the dermseg contributors. Apache-2.0.
"""Send (or send again) a finished run's DICOM outputs to a PACS.

    python -m monai_app.send OUT [--to TARGET ...] [--calling-aet AET] [--timeout S] [--retries N]

Only what ``OUT/results.json`` does not already record as sent to a target is sent, so running this again after a
PACS outage (from cron, or by hand) sends exactly what is missing.  Targets default to ``DERMSEG_SEND_TO``; see
:mod:`monai_app.pacs` for their syntax and the other ``DERMSEG_*`` settings, which :mod:`monai_app.settings` reads
(an option given here beats its variable).

Exit status: 0 when every DICOM output is on every target (also when nothing needed sending); 1 when at least one
transfer failed (the reasons are printed and recorded in results.json, ready for the next retry); 2 when nothing
could be tried: a bad or missing target, or no readable results.json in OUT.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import List, Optional

from monai_app.pacs import TargetError, parse_targets, send_outputs
from monai_app.settings import ENV_SEND_TO, send_options_from_env, send_to_from_env

EXIT_ALL_SENT = 0
EXIT_SOME_FAILED = 1
EXIT_NOT_TRIED = 2


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m monai_app.send",
        description="Send the DICOM outputs of a dermseg run to a PACS (C-STORE or STOW-RS); "
        "only what is not yet sent to a target is sent.",
        epilog="exit status: 0 all sent, 1 some transfers failed (see results.json), 2 nothing could be tried",
    )
    parser.add_argument("out_dir", type=Path, help="the run's output folder (holds results.json)")
    parser.add_argument(
        "--to",
        action="append",
        metavar="TARGET",
        help=f"dicom://AET@host:port or http(s)://host:port/dicom-web; repeatable (default: ${ENV_SEND_TO})",
    )
    parser.add_argument("--calling-aet", help="our AE title for C-STORE (default: $DERMSEG_CALLING_AET or DERMSEG)")
    parser.add_argument("--timeout", type=float, help="seconds per connection and response (default 30)")
    parser.add_argument("--retries", type=int, help="extra attempts after a transient failure (default 2)")
    parser.add_argument("--retry-delay", type=float, help="seconds before the first retry, doubling (default 2)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every step")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if not args.verbose:
        logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)  # its errors repeat what the summary says

    try:
        targets = parse_targets(send_to_from_env() if args.to is None else args.to)
        options = send_options_from_env(
            calling_aet=args.calling_aet,
            timeout=args.timeout,
            retries=args.retries,
            retry_delay=args.retry_delay,
        )
        summary = send_outputs(args.out_dir, targets, options=options)
    except (TargetError, FileNotFoundError, NotADirectoryError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_NOT_TRIED
    if not summary.targets:
        print(f"error: no target: give --to TARGET or set {ENV_SEND_TO}", file=sys.stderr)
        return EXIT_NOT_TRIED
    print(summary)
    return EXIT_ALL_SENT if summary.ok else EXIT_SOME_FAILED


if __name__ == "__main__":
    sys.exit(main())
