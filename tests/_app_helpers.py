# Copyright (c) the dermseg contributors. Apache-2.0.
"""Helpers for the app and operator tests: a tiny TorchScript model and DICOM/photo inputs from real ISIC images.

Import what you need; the fixtures built from them are in ``conftest.py``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
# Real ISIC images: the 512-px copy in ../shared where it is (CI), else the 16 pairs the project ships for tests
# (64 px, same layout), so the app's tests run on a user's machine too.
SHARED_512 = REPO.parent / "shared" / "data" / "isic2018_task1_512"
SHIPPED_SAMPLE = REPO / "tests" / "data" / "isic_sample"
DATA_512 = SHARED_512 if (SHARED_512 / "ISIC2018_Task1-2_Training_Input").is_dir() else SHIPPED_SAMPLE
SAMPLES = REPO / "samples"
TINY_MODEL_METADATA = {"name": "dermseg_tiny_test", "version": "0.0.1-test", "description": "random weights, tests only"}


def _load_make_samples():
    spec = importlib.util.spec_from_file_location("dermseg_make_samples", SAMPLES / "make_samples.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_samples = _load_make_samples()
photo_dataset = make_samples.photo_dataset
save_dicom = make_samples.save
DERMOSCOPIC_PHOTOGRAPHY = make_samples.DERMOSCOPIC_PHOTOGRAPHY
VL_PHOTOGRAPHIC = make_samples.VL_PHOTOGRAPHIC
SECONDARY_CAPTURE = make_samples.SECONDARY_CAPTURE


TINY_CHANNELS = (4, 8, 16, 32, 64)


def make_tiny_model(path: Path, seed: int = 0) -> Path:
    """A small random RIBCUNet exported as the bundle exports it: TorchScript with metadata.json embedded.

    Random weights give logits near a constant (an all-lesion or all-background mask proves little), so the
    head is scaled and centred on a real image: the masks then cover part of each image, with sharp edges.
    """
    from networks import RIBCUNet
    from networks.preprocessing import rgb_to_model_input

    torch.manual_seed(seed)
    network = RIBCUNet(channels=TINY_CHANNELS).eval()
    with torch.no_grad():
        network.head.weight.mul_(40.0)
        network.head.bias.zero_()
        logits = network(rgb_to_model_input(isic_rgb("ISIC_0000000", 256))[None])
        network.head.bias.fill_(-float(logits.median()))
    model = torch.jit.script(network)
    torch.jit.save(model, str(path), _extra_files={"metadata.json": json.dumps(TINY_MODEL_METADATA)})
    return Path(path)


def export_onnx_like_the_bundle(torchscript_path: Path, path: Path) -> Path:
    """The tiny TorchScript model as ONNX, its metadata.json in ``metadata_props``, by the bundle's own export:
    traced from the eager network with the same weights, as ``scripts/export_onnx.py`` does."""
    from networks import RIBCUNet
    from networks.export import export_onnx

    extra = {"metadata.json": ""}
    module = torch.jit.load(str(torchscript_path), _extra_files=extra).eval()
    network = RIBCUNet(channels=TINY_CHANNELS).eval()
    network.load_state_dict(module.state_dict())
    export_onnx(network, path, metadata=json.loads(extra["metadata.json"]))
    return Path(path)


def quantize_like_the_bundle(onnx_path: Path, path: Path, calibration_images: int = 4) -> Path:
    """The ONNX model quantized to int8 by the bundle's own ``scripts/quantize_onnx.py``, calibrated on the
    shipped ISIC sample's training cases."""
    sys.path.insert(0, str(REPO / "training_bundle"))
    from scripts.quantize_onnx import quantize_onnx

    quantize_onnx(str(onnx_path), str(path), str(SHIPPED_SAMPLE), str(SHIPPED_SAMPLE / "datalist.json"), calibration_images)
    return Path(path)


def isic_rgb(name: str = "ISIC_0000000", size: int | None = 96) -> np.ndarray:
    """A real dermoscopy image, small by default so tests stay fast.

    From the shipped sample, a name it does not hold maps to one it does, deterministically."""
    folder = DATA_512 / "ISIC2018_Task1-2_Training_Input"
    if not (folder / f"{name}.jpg").exists():
        available = sorted(p.stem for p in folder.glob("ISIC_*.jpg"))
        name = available[int("".join(ch for ch in name if ch.isdigit()) or 0) % len(available)]
    return make_samples.isic_rgb(name, DATA_512, size)


def non_photo_dicom(path: Path, sop_class: str, modality: str) -> Path:
    """A small CT-like or SR-like DICOM file: readable, but not a photograph."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = modality
    ds.PatientName = "Test^Patient"
    if modality == "CT":
        ds.Rows = ds.Columns = 4
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = np.zeros((4, 4), np.int16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def run_app(input_path: Path, output_path: Path, model_path: Path, env: dict | None = None, timeout: int = 240):
    """``python -m monai_app -i IN -o OUT -m MODEL`` in a subprocess, as a user or a MAP runs it."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    command = ["bash", "-c", 'ulimit -s 32768 2>/dev/null; exec "$0" "$@"', PYTHON, "-m", "monai_app",
               "-i", str(input_path), "-o", str(output_path), "-m", str(model_path)]
    return subprocess.run(command, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)


def read_results(output_path: Path) -> dict:
    """The run's results.json, checked against its schema (operators.results) on every read in the tests."""
    from operators.results import read_results as read_checked

    return read_checked(output_path)


def dciodvfy_errors(path: Path) -> list:
    """The error lines dciodvfy (dicom3tools) reports for a file; warnings are not errors."""
    tool = Path(PYTHON).parent / "dciodvfy"
    result = subprocess.run([str(tool), "-new", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


def run_operator_alone(make_operator, cases=None, has_output: bool = True, inputs=None, outputs=None):
    """Run one operator in a Holoscan app of its own: a feeder emits ``cases`` once (unless the operator is the
    source), a collector keeps what comes out.  Returns the list of batches the operator emitted.

    ``make_operator(app)`` builds the operator under test inside ``compose()``.  ``inputs`` maps more input
    ports to the message each gets once; with ``outputs`` (port names) the result is ``{port: [messages]}``.
    """
    from holoscan.conditions import CountCondition

    from monai.deploy.core import Application, Operator

    from operators.case import CaseBatch

    ports = list(outputs or (["cases"] if has_output else []))
    collected = {port: [] for port in ports}
    feeds = dict(inputs or {})
    if cases is not None:
        feeds["cases"] = CaseBatch(cases, last=True)

    class Feeder(Operator):
        def setup(self, spec):
            for port in feeds:
                spec.output(port)

        def compute(self, op_input, op_output, context):
            for port, message in feeds.items():
                op_output.emit(message, port)

    class Collector(Operator):
        def setup(self, spec):
            for port in ports:
                spec.input(port)

        def compute(self, op_input, op_output, context):
            for port in ports:
                collected[port].append(op_input.receive(port))

    class OneOperatorApp(Application):
        def compose(self):
            under_test = make_operator(self)
            if feeds:
                feeder = Feeder(self, CountCondition(self, 1), name="feeder")
                self.add_flow(feeder, under_test, {(port, port) for port in feeds})
            if ports:
                self.add_flow(under_test, Collector(self, name="collector"), {(port, port) for port in ports})
            elif not feeds:
                self.add_operator(under_test)

    OneOperatorApp([sys.executable]).run()
    return collected if outputs else collected.get("cases", [])
