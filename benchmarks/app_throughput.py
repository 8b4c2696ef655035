"""The app's speed on typical dermoscopy: per stage, end to end, and the inference runtimes side by side.

    .venv/bin/python benchmarks/app_throughput.py [--model MODEL] [--cases 100] [--app-cases 60]

Inputs are Dermoscopic Photography DICOM files (JPEG baseline, 765 x 575, the typical ISIC dermoscopy size)
made from the shipped sample photos; then the same at a camera's full resolution, 3024 x 2016 (``--full-res-cases``
of them, with sensor-like noise so that each JPEG is the size of a camera's, about 1.5 MB).  Four tables (the first
two for each size):

1. per stage, in this process, over ``--cases`` cases with the app's own functions and model runtime: decode,
   preprocess, model call (``--batch`` cases per call, the app's default), postprocess (resize to the photo,
   sigmoid, mask), confidence, and the writers (binary + fractional SEG, SR, overlay PNG + Secondary Capture);
2. the whole app, ``python -m monai_app`` in a subprocess: its start-up alone (an empty input folder), then
   ``--app-cases`` cases: wall time including start-up, images/s, and the peak resident memory of the app;
3. the model call per image with TorchScript as exported, frozen TorchScript and ONNX Runtime at batch 1 and 8,
   so the app's choice of runtime and batch rests on a measurement;
4. how far the app's runtime's output is from TorchScript's, the reference export (logits and masks).

Without ``--model`` the bundle's exports in ``training_bundle/models/`` are used (``model.onnx`` and
``model.ts``, as the app picks them); where there are none, a random RIBCUNet of the shipped width (same cost,
meaningless masks) is exported in their place and the tables say so.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np
import PIL.Image
import pydicom
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "samples"))

from make_samples import photo_dataset  # noqa: E402  (the sample builder: the same DMS files the demo ships)

from network_size import SHIPPED_WIDTH  # noqa: E402
from networks import RIBCUNet  # noqa: E402
from networks.export import export_onnx  # noqa: E402
from networks.preprocessing import logits_to_probability, probability_to_mask, rgb_to_model_input  # noqa: E402
from operators.case import ModelInfo  # noqa: E402
from operators.confidence import lesion_confidence  # noqa: E402
from operators import dicom_outputs as build  # noqa: E402
from operators.loader import dicom_to_rgb, load_file  # noqa: E402
from operators.model import load_model, resolve_model_file  # noqa: E402
from operators.writers import OVERLAY_PNG_MAX_SIDE, write_png  # noqa: E402
from monai_app.settings import AppSettings  # noqa: E402

TYPICAL_SIZE = (765, 575)  # width, height
FULL_RES_SIZE = (3024, 2016)  # a 6-megapixel camera photo (a dermatoscope on a phone or a DSLR)
TARGET_IMAGES_PER_S = {TYPICAL_SIZE: 4.0, FULL_RES_SIZE: 1.0}  # the whole app, start-up included
BATCH = 8  # the batched rows of the runtime table
APP_BATCH = AppSettings.from_env({}).batch_size  # the app's default cases per model call


def sample_photos(size=TYPICAL_SIZE, noise: int = 0) -> List[np.ndarray]:
    """The shipped sample photos (DICOM and JPEG), as RGB at ``size`` (width, height); ``noise`` adds uniform
    noise of that amplitude (a smooth upscaled photo compresses far better than a camera's)."""
    rng = np.random.default_rng(0)
    photos = []
    for path in sorted((REPO / "samples" / "input").rglob("*")):
        if path.suffix.lower() == ".dcm":
            rgb = dicom_to_rgb(pydicom.dcmread(path))
        elif path.suffix.lower() in (".jpg", ".jpeg", ".png"):
            rgb = np.asarray(PIL.Image.open(path).convert("RGB"))
        else:
            continue
        photo = np.asarray(PIL.Image.fromarray(rgb).resize(size, PIL.Image.BILINEAR))
        if noise:
            photo = np.clip(photo + rng.integers(-noise, noise + 1, photo.shape, dtype=np.int16), 0, 255).astype(np.uint8)
        photos.append(photo)
    return photos


def make_inputs(folder: Path, count: int, size=TYPICAL_SIZE) -> List[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    photos = sample_photos(size, noise=12 if size == FULL_RES_SIZE else 0)
    paths = []
    for i in range(count):
        ds = photo_dataset(photos[i % len(photos)], compression="jpeg", pixel_spacing_mm=0.02, seed=f"bench-{size[0]}-{i}")
        path = folder / f"case{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def model_folder(requested: str | None, scratch: Path) -> tuple[Path, str]:
    """The model (file or folder) to measure, and how the tables name it."""
    if requested:
        return Path(requested), requested
    exported = REPO / "training_bundle" / "models"
    try:
        resolve_model_file(exported)
        return exported, "training_bundle/models (model_int8.onnx on the CPU, as the app picks it)"
    except (FileNotFoundError, ValueError):
        pass
    torch.manual_seed(0)
    folder = scratch / "random_model"
    folder.mkdir()
    network = RIBCUNet(channels=SHIPPED_WIDTH).eval()
    metadata = json.dumps({"name": "random", "version": "0"})
    torch.jit.save(torch.jit.script(network), str(folder / "model.ts"), _extra_files={"metadata.json": metadata})
    export_onnx(torch.jit.load(str(folder / "model.ts")), folder / "model.onnx", metadata=json.loads(metadata))
    return folder, f"RANDOM weights, width {SHIPPED_WIDTH[0]} (no export found)"


def stage_table(paths: List[Path], model, info: ModelInfo, out: Path, batch: int) -> Dict[str, float]:
    seconds: Dict[str, float] = {k: 0.0 for k in ("decode", "preprocess", "model", "postprocess", "confidence", "SEG (binary + fractional)", "SR", "overlay PNG + SC")}
    for start in range(0, len(paths), batch):
        chunk = paths[start : start + batch]
        t = time.perf_counter()
        cases = [load_file(p, p.name) for p in chunk]
        seconds["decode"] += time.perf_counter() - t
        t = time.perf_counter()
        inputs = torch.stack([rgb_to_model_input(c.rgb, info.input_size) for c in cases])
        seconds["preprocess"] += time.perf_counter() - t
        t = time.perf_counter()
        with torch.inference_mode():
            logits = model(inputs)
        seconds["model"] += time.perf_counter() - t
        for i, case in enumerate(cases):
            t = time.perf_counter()
            probability = logits_to_probability(logits[i : i + 1], case.rgb.shape[:2])
            case.probability = probability[0, 0].numpy()
            case.mask = probability_to_mask(probability, cleanup=info.mask_cleanup)[0, 0].numpy()
            seconds["postprocess"] += time.perf_counter() - t
            t = time.perf_counter()
            case.confidence = lesion_confidence(case.probability)
            seconds["confidence"] += time.perf_counter() - t
            t = time.perf_counter()
            seg = build.build_binary_seg(case.source, case.mask, info)
            seg.save_as(out / f"{i}_seg.dcm")
            build.build_fractional_seg(case.source, case.probability, info).save_as(out / f"{i}_fseg.dcm")
            seconds["SEG (binary + fractional)"] += time.perf_counter() - t
            t = time.perf_counter()
            area, unit = build.lesion_area(case.source, case.mask)
            build.build_measurement_report(case.source, seg, info, area, unit, case.confidence).save_as(out / f"{i}_sr.dcm")
            seconds["SR"] += time.perf_counter() - t
            t = time.perf_counter()
            overlay = build.overlay_rgb(case.rgb, case.mask)
            write_png(overlay, out / f"{i}_overlay.png", max_side=OVERLAY_PNG_MAX_SIDE)
            build.build_overlay_sc(case.source, overlay, info).save_as(out / f"{i}_sc.dcm")
            seconds["overlay PNG + SC"] += time.perf_counter() - t
    return seconds


def whole_app(input_folder: Path, model: Path, out: Path) -> Dict[str, float]:
    command = ["bash", "-c", 'ulimit -s 32768 2>/dev/null; exec "$0" "$@"', sys.executable, "-m", "monai_app",
               "-i", str(input_folder), "-o", str(out), "-m", str(model)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"the app failed ({result.returncode}):\n{result.stderr[-3000:]}")
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # the largest child so far: the app
    cases = json.loads((out / "results.json").read_text())["cases"]
    ok = sum(c["status"] == "ok" for c in cases)
    return {"wall_s": wall, "cases": len(cases), "ok": ok, "img_s": len(cases) / wall,
            "peak_rss_mib": max(peak_kib, before) / 1024}


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def runtime_table(model: Path, scratch: Path, repeats: int) -> tuple[List[tuple], Dict[str, float]]:
    """Per-image model time by runtime and batch, at the model's input size; and how far ONNX Runtime's output is
    from TorchScript's."""
    script_file = resolve_model_file(model, kind="torchscript")
    onnx_file = resolve_model_file(model)  # as the app picks it on the CPU
    exported = torch.jit.load(str(script_file)).eval()
    frozen = torch.jit.freeze(torch.jit.load(str(script_file)).eval())
    if onnx_file.suffix != ".onnx":  # a TorchScript file alone: export it here to compare
        onnx_file = scratch / "compare.onnx"
        export_onnx(exported, onnx_file)
    onnx_model, info = load_model(onnx_file)
    runners: Dict[str, Callable[[torch.Tensor], object]] = {
        "ONNX Runtime (the app on a CPU)": onnx_model,
        "TorchScript as exported (the app on a GPU)": exported,
        "TorchScript frozen": frozen,
    }
    rows = []
    with torch.inference_mode():
        for batch in (1, BATCH):
            x = torch.rand(batch, 3, *info.input_size)
            for name, run in runners.items():
                rows.append((name, batch, 1e3 * median_seconds(lambda: run(x), repeats) / batch))
        photos = torch.stack([rgb_to_model_input(photo, info.input_size) for photo in sample_photos()])
        reference, ours = exported(photos), onnx_model(photos)
    agreement = {"max_abs_logit": float((ours - reference).abs().max()),
                 "mask_pixels_differing": float(((ours > 0) != (reference > 0)).float().mean())}
    return rows, agreement


def measure_size(size, cases: int, app_cases: int, model: Path, loaded, info: ModelInfo, batch: int, scratch: Path) -> None:
    """Tables 1 and 2 for inputs of ``size`` (width, height), printed."""
    work = scratch / f"{size[0]}x{size[1]}"
    paths = make_inputs(work / "in", max(cases, app_cases), size)
    (work / "written").mkdir()
    stages = stage_table(paths[:cases], loaded, info, work / "written", batch)
    (work / "app_in").mkdir()
    for p in paths[:app_cases]:
        os.link(p, work / "app_in" / p.name)
    (work / "empty").mkdir()
    startup = whole_app(work / "empty", model, work / "empty_out")
    app = whole_app(work / "app_in", model, work / "app_out")
    megabytes = sum(p.stat().st_size for p in paths) / len(paths) / 1e6

    print(f"\n### DMS JPEG {size[0]}x{size[1]} (files of {megabytes:.2f} MB on average)\n")
    total = sum(stages.values())
    print(f"Per stage, {cases} cases in one process ({type(loaded).__name__}, {batch} case(s) per model call)\n")
    print("| stage | ms per image | share |")
    print("|---|---:|---:|")
    for name, s in stages.items():
        print(f"| {name} | {1e3 * s / cases:.1f} | {100 * s / total:.0f}% |")
    print(f"| **all stages** | **{1e3 * total / cases:.1f}** | {cases / total:.2f} images/s |")

    print("\nThe whole app, `python -m monai_app`, start-up included\n")
    print("| run | cases (ok) | wall (s) | images/s | target | peak RSS (MiB) |")
    print("|---|---:|---:|---:|---:|---:|")
    print(f"| start-up alone (empty input) | 0 | {startup['wall_s']:.1f} | | | {startup['peak_rss_mib']:.0f} |")
    print(f"| {app['cases']} cases | {app['cases']} ({app['ok']}) | {app['wall_s']:.1f} | {app['img_s']:.2f} | "
          f">= {TARGET_IMAGES_PER_S[size]:.2f} | {app['peak_rss_mib']:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model file or folder (default: the bundle's exports)")
    parser.add_argument("--cases", type=int, default=100, help="cases for the per-stage table")
    parser.add_argument("--app-cases", type=int, default=60, help="cases for the whole-app run")
    parser.add_argument("--full-res-cases", type=int, default=30,
                        help=f"{FULL_RES_SIZE[0]}x{FULL_RES_SIZE[1]} cases for both tables (0: skip that size)")
    parser.add_argument("--batch", type=int, default=APP_BATCH, help="cases per model call in the per-stage table")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)

    with tempfile.TemporaryDirectory(prefix="dermseg-bench-") as scratch:
        scratch = Path(scratch)
        model, model_label = model_folder(args.model, scratch)
        loaded, info = load_model(model)
        print(f"\nModel: {model_label}; {torch.get_num_threads()} threads")
        measure_size(TYPICAL_SIZE, args.cases, args.app_cases, model, loaded, info, args.batch, scratch)
        if args.full_res_cases:
            measure_size(FULL_RES_SIZE, args.full_res_cases, args.full_res_cases, model, loaded, info, args.batch, scratch)
        runtimes, agreement = runtime_table(model, scratch, args.repeats)

    print(f"\nModel call per image, {info.input_size[1]}x{info.input_size[0]} (median)\n")
    base = {b: ms for name, b, ms in runtimes if name.startswith("TorchScript as exported")}
    print("| runtime | batch | ms per image | vs TorchScript as exported |")
    print("|---|---:|---:|---:|")
    for name, batch, ms in runtimes:
        print(f"| {name} | {batch} | {ms:.0f} | {ms / base[batch]:.2f}x |")
    print(f"\nONNX Runtime against TorchScript on the {len(sample_photos())} sample photos: largest logit difference "
          f"{agreement['max_abs_logit']:.1e}, mask pixels differing {100 * agreement['mask_pixels_differing']:.4f}%")


if __name__ == "__main__":
    main()
