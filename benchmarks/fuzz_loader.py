"""Fuzz the loader's per-file path (operators.loader.load_file, what SkinPhotoLoaderOperator calls per file).

    .venv/bin/python benchmarks/fuzz_loader.py [--count 10000] [--seed 0] [--max-rss-mb 1024]

Inputs are real files mutated by hypothesis: small DICOM photographs (uncompressed RGB, JPEG baseline YBR_FULL_422,
YBR header over RGB bytes, monochrome) and JPEG / PNG photos, with bit flips, truncation, spliced junk, edited
Rows / Columns / BitsAllocated / SamplesPerPixel / PhotometricInterpretation / NumberOfFrames / PlanarConfiguration
/ TransferSyntaxUID, and JPEG SOF / PNG IHDR sizes rewritten (decompression bombs).  Every input must come back
as a Case (ok, error or skipped): an exception escaping load_file, an input running longer than --timeout seconds,
an out-of-memory error, or the process's peak RSS growing more than --max-rss-mb fails the run (exit 1).
The address space is capped at its size after start-up plus twice --max-rss-mb, so a blow-up cannot take the
machine down: it shows as an "out of memory" error, counted as a failure.
"""

from __future__ import annotations

import argparse
import collections
import io
import re
import resource
import signal
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import numpy as np  # noqa: E402
import PIL.Image  # noqa: E402
import pydicom  # noqa: E402
import hypothesis  # noqa: E402
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from operators.loader import load_file  # noqa: E402

from _bad_input_helpers import dicom_bytes_as_is, patch_jpeg_size  # noqa: E402

SYNTAXES = [
    "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.5",
    "1.2.3.4", "",
]
PHOTOMETRIC = ["RGB", "YBR_FULL", "YBR_FULL_422", "MONOCHROME1", "MONOCHROME2", "PALETTE COLOR", "YBR_ICT", "", "X"]


class Hang(BaseException):
    """Raised by the alarm: a BaseException, so load_file's error boundary cannot swallow it."""


def _alarm(signum, frame):
    raise Hang()


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def _vm_size() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmSize:")) * 1024


def seed_files() -> dict:
    """name -> bytes: small real inputs (an ISIC image where the data set is here, else a synthetic one)."""
    from _app_helpers import isic_rgb, photo_dataset

    try:
        rgb = isic_rgb("ISIC_0000000", 24)
    except OSError:
        yy, xx = np.mgrid[0:24, 0:24]
        rgb = np.stack([yy * 10, xx * 10, (yy + xx) * 5], -1).astype(np.uint8)
    seeds = {}
    for name, compression in (("raw.dcm", "none"), ("jpeg.dcm", "jpeg"), ("ybr_rgb.dcm", "ybr-header-rgb-bytes")):
        seeds[name] = dicom_bytes_as_is(photo_dataset(rgb, compression=compression, seed=name))
    mono = photo_dataset(rgb, seed="mono")
    mono.SamplesPerPixel, mono.PhotometricInterpretation, mono.PixelData = 1, "MONOCHROME2", rgb[..., 0].tobytes()
    seeds["mono.dcm"] = dicom_bytes_as_is(mono)
    for name, fmt in (("photo.jpg", "JPEG"), ("photo.png", "PNG")):
        buffer = io.BytesIO()
        PIL.Image.fromarray(rgb).save(buffer, format=fmt)
        seeds[name] = buffer.getvalue()
    return seeds


def edit_dicom(data: bytes, edits: dict) -> bytes:
    """The DICOM file with some header values replaced; the bytes unchanged where pydicom cannot write the result."""
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
        for keyword, value in edits.items():
            if keyword == "TransferSyntaxUID":
                ds.file_meta.TransferSyntaxUID = value
            elif value is None:
                if keyword in ds:
                    delattr(ds, keyword)
            else:
                setattr(ds, keyword, value)
        return dicom_bytes_as_is(ds)
    except Exception:
        return data


def edit_photo_size(data: bytes, height: int, width: int) -> bytes:
    if data[:2] == b"\xff\xd8":
        return patch_jpeg_size(data, height, width)
    if data[:8] == b"\x89PNG\r\n\x1a\n":  # IHDR width and height (the CRC is left stale: another error path)
        return data[:16] + width.to_bytes(4, "big") + height.to_bytes(4, "big") + data[24:]
    return data


header_edits = st.dictionaries(
    st.sampled_from(["Rows", "Columns", "BitsAllocated", "BitsStored", "SamplesPerPixel", "PhotometricInterpretation",
                     "TransferSyntaxUID", "NumberOfFrames", "PlanarConfiguration", "PixelData", "SOPClassUID"]),
    st.none(),
    max_size=3,
).flatmap(lambda keys: st.fixed_dictionaries({k: _value_strategy(k) for k in keys}))


def _value_strategy(keyword):
    return {
        "Rows": st.integers(0, 65535) | st.none(),
        "Columns": st.integers(0, 65535) | st.none(),
        "BitsAllocated": st.sampled_from([0, 1, 7, 8, 12, 16, 32, 64]) | st.none(),
        "BitsStored": st.sampled_from([0, 1, 8, 12, 16]),
        "SamplesPerPixel": st.integers(0, 8) | st.none(),
        "PhotometricInterpretation": st.sampled_from(PHOTOMETRIC) | st.none(),
        "TransferSyntaxUID": st.sampled_from(SYNTAXES),
        "NumberOfFrames": st.integers(0, 1000) | st.none(),
        "PlanarConfiguration": st.integers(0, 3) | st.none(),
        "PixelData": st.none() | st.binary(max_size=64),
        "SOPClassUID": st.sampled_from(["1.2.840.10008.5.1.4.1.1.77.1.4", "1.2.840.10008.5.1.4.1.1.7",
                                        "1.2.840.10008.5.1.4.1.1.2", "1.2.3"]) | st.none(),
    }[keyword]


mutations = st.fixed_dictionaries({
    "edits": header_edits,
    "size": st.none() | st.tuples(st.integers(0, 65535), st.integers(0, 65535)),
    "flips": st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 7)), max_size=8),
    "splice": st.none() | st.tuples(st.floats(0, 1), st.binary(min_size=1, max_size=64)),
    "truncate": st.none() | st.floats(0, 1, exclude_max=True),
    "suffix": st.sampled_from([None, ".dcm", ".jpg", ".png", ".txt", ""]),
})


def mutate(name: str, data: bytes, m: dict) -> tuple:
    if name.endswith(".dcm") and m["edits"]:
        data = edit_dicom(data, m["edits"])
    if m["size"] is not None and not name.endswith(".dcm"):
        data = edit_photo_size(data, *m["size"])
    buffer = bytearray(data)
    for where, bit in m["flips"]:
        if buffer:
            buffer[int(where * len(buffer))] ^= 1 << bit
    if m["splice"] is not None:
        at = int(m["splice"][0] * len(buffer))
        buffer[at:at] = m["splice"][1]
    if m["truncate"] is not None:
        del buffer[int(m["truncate"] * len(buffer)):]
    suffix = Path(name).suffix if m["suffix"] is None else m["suffix"]
    return bytes(buffer), suffix


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000, help="inputs to try (default 10000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-rss-mb", type=float, default=1024.0,
                        help="allowed peak RSS growth (default 1024: a photo at the 50-megapixel limit takes ~600)")
    parser.add_argument("--timeout", type=int, default=20, help="seconds one input may take (default 20)")
    args = parser.parse_args(argv)

    seeds = seed_files()
    names = sorted(seeds)
    work = Path(tempfile.mkdtemp(prefix="fuzz_loader_"))
    counts = collections.Counter()
    errors = collections.Counter()
    failures = []
    by_seed = collections.Counter()

    # warm up every seed once (imports, codec set-up) before taking the RSS baseline
    for name in names:
        (work / name).write_bytes(seeds[name])
        case = load_file(work / name, name)
        assert case.status == "ok", (name, case.error)
    rss_start = _rss_mib()
    peak_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    limit = _vm_size() + int(2 * args.max_rss_mb * 2**20)
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    signal.signal(signal.SIGALRM, _alarm)
    slowest = (0.0, "")
    peak_seen = [peak_start]
    biggest_step = [0.0, ""]  # the input that raised the peak RSS most: where to look when it grows
    started = time.perf_counter()

    @settings(max_examples=args.count, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck), derandomize=False)
    @given(name=st.sampled_from(names), m=mutations)
    def fuzz(name, m):
        nonlocal slowest
        data, suffix = mutate(name, seeds[name], m)
        path = work / f"input{suffix}"
        for stale in work.glob("input*"):
            stale.unlink()
        path.write_bytes(data)
        counts["tried"] += 1
        by_seed[name] += 1
        t0 = time.perf_counter()
        signal.alarm(args.timeout)
        try:
            case = load_file(path, path.name)
        except Hang:
            counts["hung"] += 1
            failures.append(f"{name} {m}: took over {args.timeout} s")
            return
        except BaseException as exc:  # noqa: BLE001 - the point: nothing may escape
            counts["escaped"] += 1
            failures.append(f"{name} {m}: {type(exc).__name__}: {exc}")
            return
        finally:
            signal.alarm(0)
        took = time.perf_counter() - t0
        if took > slowest[0]:
            slowest = (took, f"{name} {m}")
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        if peak - peak_seen[0] > biggest_step[0]:
            biggest_step[:] = [peak - peak_seen[0], f"{name} {m} -> {case.status}: {(case.error or '')[:120]}"]
        peak_seen[0] = max(peak_seen[0], peak)
        counts[case.status] += 1
        if case.status != "ok":
            if "out of memory" in (case.error or ""):
                counts["out of memory"] += 1
                failures.append(f"{name} {m}: {case.error}")
            message = (case.error or "").split(": ", 1)[-1]
            errors[re.sub(r"\d+", "N", message)[:90]] += 1

    hypothesis.seed(args.seed)(fuzz)()
    elapsed = time.perf_counter() - started
    growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - peak_start
    rss_growth = _rss_mib() - rss_start
    for stale in work.glob("*"):
        stale.unlink()
    work.rmdir()

    rows = [
        ("inputs tried", counts["tried"]),
        ("ok", counts["ok"]),
        ("error (clean entry)", counts["error"]),
        ("skipped (clean entry)", counts["skipped"]),
        ("escaped exceptions", counts["escaped"]),
        ("hung (> %d s)" % args.timeout, counts["hung"]),
        ("out of memory", counts["out of memory"]),
        ("peak RSS growth (MiB)", f"{growth:.1f}"),
        ("RSS growth start->end (MiB)", f"{rss_growth:.1f}"),
        ("largest peak RSS step (MiB)", f"{biggest_step[0]:.1f}"),
        ("slowest input (s)", f"{slowest[0]:.2f}"),
        ("time (s)", f"{elapsed:.1f}"),
        ("inputs / s", f"{counts['tried'] / elapsed:.0f}"),
    ]
    print("\nfuzz_loader: operators.loader.load_file under hypothesis")
    print(f"{'':-<44}")
    for label, value in rows:
        print(f"{label:<30} {value:>13}")
    print(f"{'':-<44}")
    print("inputs per seed: " + ", ".join(f"{k} {v}" for k, v in sorted(by_seed.items())))
    print(f"slowest input: {slowest[1][:300]}")
    print(f"largest peak RSS step: {biggest_step[1][:300]}")
    print("most common error / skip messages:")
    for message, n in errors.most_common(12):
        print(f"  {n:6d}  {message}")
    ok = not failures and growth <= args.max_rss_mb
    for failure in failures[:20]:
        print("FAIL", failure[:500])
    if growth > args.max_rss_mb:
        print(f"FAIL peak RSS grew {growth:.0f} MiB, more than {args.max_rss_mb:.0f}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
