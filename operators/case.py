# Copyright (c) the dermseg contributors. Apache-2.0.
"""What flows between the operators: one :class:`Case` per input file, and helpers every operator shares.

A batch travels through the pipeline as a list of cases.  Every case carries its own status, so a file that
failed to load (or to segment, or to write) is simply passed along as an ``error`` case until the results
writer records it: one bad file never stops the others.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np

from networks.durable import atomic_write_bytes, atomic_write_with, is_partial_name
from networks.preprocessing import MODEL_INPUT_SIZE

from .conventions import CaseStatus, is_valid_uid

__all__ = [
    "Case", "CaseBatch", "ModelInfo", "CaseStatus", "is_valid_uid", "atomic_write_bytes", "atomic_write_with",
    "case_output_dir", "remove_partial_files",
]


@dataclass(frozen=True)
class ModelInfo:
    """Who the model that made a result is, the input it takes and how its masks are finished: name, version,
    ``(height, width)`` of its input, its precision (``"int8"`` for a quantized export) and the clean-up of its
    thresholded masks (``networks.preprocessing.clean_mask``), from the bundle's ``metadata.json`` embedded in
    the export (TorchScript or ONNX)."""

    name: str
    version: str
    input_size: Tuple[int, int] = MODEL_INPUT_SIZE
    precision: str = "fp32"
    mask_cleanup: str = "none"


@dataclass
class Case:
    """One photograph on its way through the pipeline.

    ``source_file`` is relative to the input folder (it goes into results.json as is).  ``source`` is the DICOM
    dataset the outputs reference: the file as read, or the VL Photographic wrapper built for a plain photo
    (``wrapped`` is then True and the writer stores the wrapper in OUT).  ``rgb`` is ``(H, W, 3)`` uint8.
    """

    source_file: str
    status: str = CaseStatus.OK
    error: Optional[str] = None
    source: Any = None  # pydicom.Dataset
    wrapped: bool = False
    rgb: Optional[np.ndarray] = None
    # filled by the segmentation operator
    probability: Optional[np.ndarray] = None  # (H, W) float32 in [0, 1]
    mask: Optional[np.ndarray] = None  # (H, W) uint8 in {0, 1}
    model: Optional[ModelInfo] = None
    flip_agreement: Optional[float] = None  # only with test-time flips
    # filled by the confidence operator
    confidence: Optional[float] = None
    route: Optional[str] = None
    # filled by the writers
    lesion_area_mm2: Optional[float] = None
    lesion_area_px: Optional[int] = None
    outputs: Dict[str, str] = field(default_factory=dict)  # kind -> path relative to OUT

    @property
    def ok(self) -> bool:
        return self.status == CaseStatus.OK

    @property
    def sop_instance_uid(self) -> Optional[str]:
        uid = getattr(self.source, "SOPInstanceUID", None) if self.source is not None else None
        return str(uid) if uid else None

    def fail(self, stage: str, exc: BaseException | str) -> None:
        """Turn this case into an error entry; pixels are dropped so a failed case holds no memory.

        The first failure is the one recorded: writer branches run side by side, and a step that was already
        working on the case when another failed it fails too, for want of the pixels."""
        if self.status == CaseStatus.ERROR:
            return
        message = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
        self.status = CaseStatus.ERROR
        self.error = f"{self.source_file}: {stage} failed: {message}"
        self.rgb = self.probability = self.mask = None

    def release_pixels(self) -> None:
        """Drop the arrays once everything is written: a long batch must not keep every image in memory."""
        self.rgb = self.probability = self.mask = None


class CaseBatch(list):
    """A chunk of cases as one message between operators; ``last`` marks the final chunk of the run."""

    def __init__(self, cases=(), last: bool = False):
        super().__init__(cases)
        self.last = bool(last)


def case_output_dir(output_root: Path, case: Case) -> Path:
    """The folder for one case's outputs: ``OUT/<SOPInstanceUID of the source>``.

    The name comes from a validated UID only, so no value in an input file can point outside OUT.
    """
    uid = case.sop_instance_uid
    if not is_valid_uid(uid):
        raise ValueError(f"source SOPInstanceUID {uid!r} is not a valid DICOM UID")
    folder = Path(output_root) / uid
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def remove_partial_files(output_root: Path) -> int:
    """Remove the temporary files a killed run left behind in OUT and its case folders; returns how many.

    Only names :func:`atomic_write_with` makes (``.<name>.<random>.part``) are touched, and only in OUT and
    ``OUT/<uid>/``: a run killed mid-write leaves one behind.
    """
    removed = 0
    output_root = Path(output_root)
    folders = [output_root] + [p for p in output_root.iterdir() if p.is_dir() and not p.is_symlink()]
    for folder in folders:
        for path in folder.iterdir():
            if is_partial_name(path.name) and path.is_file() and not path.is_symlink():
                path.unlink(missing_ok=True)
                removed += 1
    return removed
