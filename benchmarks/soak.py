"""Soak: many cases in one app run, the app process's memory sampled throughout.

    .venv/bin/python benchmarks/soak.py [--cases 500] [--size 128] [--model MODEL] [--keep DIR]

The input is real ISIC images (a few; each file made unique by a row of black and white blocks, so no two share a
SOPInstanceUID) as uncompressed DICOM, JPEG DICOM, PNG and JPEG photos, in turn.  ``python -m monai_app`` runs over
them once; its RSS is read from /proc every 0.2 s.  Reported: RSS after the first chunk (when results.json first
appears), the peak after it, the growth from one to the other (target: under 100 MB), the RSS at the end, the
median and the peak of each tenth of the run (a leak shows as a rising median, a chunk's working memory as peaks),
and images/s.  Exit 1 when the growth reaches the target or a case is not ok.  Without --model the app serves
the bundle's exports as it does by default (ONNX Runtime on a CPU); where there are none, a tiny random
TorchScript model is made (the pipeline around the model is what a soak measures).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

TARGET_GROWTH_MB = 100.0


def _rss_mib(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024
    except (OSError, StopIteration):
        return None


def build_inputs(folder: Path, cases: int, size: int) -> None:
    import PIL.Image

    from _app_helpers import DATA_512, isic_rgb, photo_dataset, save_dicom

    names = sorted(p.stem for p in (DATA_512 / "ISIC2018_Task1-2_Training_Input").glob("ISIC_*.jpg"))[:8]
    images = [isic_rgb(name, size) for name in names]
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(cases):
        rgb = images[index % len(images)].copy()
        for bit in range(12):  # the index in black and white 8-pixel blocks: unique content, through JPEG too
            rgb[:8, bit * 8 : bit * 8 + 8] = 255 if index >> bit & 1 else 0
        kind = index % 4
        if kind in (0, 1):
            compression = "none" if kind == 0 else "jpeg"
            save_dicom(photo_dataset(rgb, compression=compression, seed=f"soak-{index}"), folder / f"{index:04d}.dcm")
        else:
            suffix = ".png" if kind == 2 else ".jpg"
            PIL.Image.fromarray(rgb).save(folder / f"{index:04d}{suffix}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=500)
    parser.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    parser.add_argument("--model", type=Path,
                        help="model file or folder (default: the bundle's exports, as the app serves them; where "
                             "there are none, a tiny random TorchScript model)")
    parser.add_argument("--keep", type=Path, help="build IN and OUT here and keep them")
    parser.add_argument("--interval", type=float, default=0.2, help="seconds between RSS samples")
    args = parser.parse_args(argv)

    work = args.keep or Path(tempfile.mkdtemp(prefix="soak_"))
    work.mkdir(parents=True, exist_ok=True)
    source, out = work / "in", work / "out"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    if not source.exists():
        build_inputs(source, args.cases, args.size)
    model = args.model
    if model is None:
        from operators.model import resolve_model_file
        from monai_app.settings import DEFAULT_MODEL_PATH

        try:
            resolve_model_file(DEFAULT_MODEL_PATH)
            model = DEFAULT_MODEL_PATH
        except (FileNotFoundError, ValueError):
            from _app_helpers import make_tiny_model

            model = make_tiny_model(work / "tiny.ts")
    print(f"model: {model}")
    print(f"inputs: {args.cases} files of {args.size} px in {time.perf_counter() - t0:.0f} s", flush=True)

    command = ["bash", "-c", 'ulimit -s 32768 2>/dev/null; exec "$0" "$@"', sys.executable, "-m", "monai_app",
               "-i", str(source), "-o", str(out), "-m", str(model)]
    log = open(work / "app.log", "w")
    started = time.perf_counter()
    app = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    samples = []  # (seconds since start, RSS MiB, results.json exists)
    first_chunk_at = None
    while app.poll() is None:
        rss = _rss_mib(app.pid)
        now = time.perf_counter() - started
        if rss is not None:
            if first_chunk_at is None and (out / "results.json").exists():
                first_chunk_at = now
            samples.append((now, rss, first_chunk_at is not None))
        time.sleep(args.interval)
    wall = time.perf_counter() - started
    log.close()
    if app.returncode != 0 or first_chunk_at is None:
        print(f"app exited {app.returncode}; log: {work / 'app.log'}")
        return 1

    import json

    cases = json.loads((out / "results.json").read_text())["cases"]
    statuses = {s: sum(c["status"] == s for c in cases) for s in ("ok", "error", "skipped")}
    after_first = [rss for _, rss, seen in samples if seen]
    baseline, peak, end = after_first[0], max(after_first), after_first[-1]
    growth = peak - baseline
    steady = wall - first_chunk_at
    rows = [
        ("cases", len(cases)),
        ("ok / error / skipped", f"{statuses['ok']} / {statuses['error']} / {statuses['skipped']}"),
        ("image size (px)", f"{args.size} x {args.size}"),
        ("RSS samples", len(samples)),
        ("RSS before first chunk, max (MiB)", f"{max([r for _, r, s in samples if not s] or [0]):.0f}"),
        ("RSS after first chunk (MiB)", f"{baseline:.0f}"),
        ("peak RSS after it (MiB)", f"{peak:.0f}"),
        ("RSS at the end (MiB)", f"{end:.0f}"),
        ("peak growth (MiB), target < 100", f"{growth:.1f}"),
        ("end growth (MiB)", f"{end - baseline:.1f}"),
        ("wall time incl. start-up (s)", f"{wall:.0f}"),
        ("images/s overall", f"{len(cases) / wall:.2f}"),
        ("images/s after first chunk", f"{(len(cases) - 8) / steady:.2f}" if steady > 0 else "-"),
    ]
    print("\nsoak: one app run, RSS of the app process")
    print("-" * 52)
    for label, value in rows:
        print(f"{label:<36} {value:>15}")
    print("-" * 52)
    # RSS over the run in tenths, to tell a trend (a leak) from the working memory of a chunk (spikes)
    tenth = max(1, len(after_first) // 10)
    tenths = [after_first[i : i + tenth] for i in range(0, len(after_first), tenth)]
    print("RSS after first chunk, median of each tenth of the run (MiB): "
          + " ".join(f"{sorted(t)[len(t) // 2]:.0f}" for t in tenths))
    print("RSS after first chunk, max of each tenth of the run (MiB):    " + " ".join(f"{max(t):.0f}" for t in tenths))
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)
    ok = growth < TARGET_GROWTH_MB and statuses["ok"] == args.cases
    if not ok:
        print("FAIL: " + ("growth over target" if growth >= TARGET_GROWTH_MB else "not every case ok"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
