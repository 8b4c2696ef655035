# Copyright (c) the dermseg contributors. Apache-2.0.
"""Segmentation operator: the shared preprocessing, the exported model, the probability map, the mask."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch

from monai.deploy.core import Fragment, Operator, OperatorSpec

# The one definition of the model's input, shared with the training bundle: serving can never drift from training.
from networks.preprocessing import logits_to_probability, probability_to_mask, rgb_to_model_input

from .case import Case
from .confidence import flip_agreement
from .model import OnnxRuntimeModel, load_model

__all__ = ["LesionSegmentationOperator", "segment_cases"]


def segment_cases(cases: List[Case], model, model_info, device, batch_size: int = 1, flip_tta: bool = False) -> None:
    """Fill ``probability`` and ``mask`` of every ``ok`` case, several cases per model call.

    Each photo is squashed to the input size the model's metadata states (``model_info.input_size``), and each
    mask gets the clean-up it states (``model_info.mask_cleanup``), as the bundle's evaluation scored it.
    With ``flip_tta`` the horizontally mirrored image is segmented too (in the same model call): the probability
    and mask come from the mean of the two views' logits (the bundle's ``FlipAveragingInferer`` with flips
    ``[[], [3]]``, which scores it), and ``flip_agreement`` is the Dice of the two views' own masks: a model that
    sees a lesion differently in its mirror image is unsure of it.
    A batch that fails as a whole is retried one case at a time, so only the case at fault becomes an error.
    """
    todo = []
    for case in cases:
        if not case.ok:
            continue
        try:
            todo.append((case, rgb_to_model_input(case.rgb, model_info.input_size)))
        except Exception as exc:
            case.fail("preprocessing", exc)
    for start in range(0, len(todo), batch_size):
        batch = todo[start : start + batch_size]
        try:
            _run(batch, model, model_info, device, flip_tta)
        except Exception:
            for item in batch:
                try:
                    _run([item], model, model_info, device, flip_tta)
                except Exception as exc:
                    item[0].fail("segmentation", exc)


def _run(batch, model, model_info, device, flip_tta: bool = False) -> None:
    inputs = torch.stack([model_input for _, model_input in batch])
    if flip_tta:  # resizing commutes with mirroring, so the mirrored model input is the mirrored photo's
        inputs = torch.cat([inputs, torch.flip(inputs, dims=[-1])])
    with torch.inference_mode():
        logits = model(inputs.to(device))
    if logits.ndim != 4 or logits.shape[0] != len(inputs) or logits.shape[1] != 1:
        raise ValueError(f"model returned shape {tuple(logits.shape)}, expected ({len(inputs)}, 1, h, w)")
    logits = logits.float().cpu()
    for index, (case, _) in enumerate(batch):
        size = case.rgb.shape[:2]
        view = logits[index : index + 1]
        if flip_tta:
            mirrored = torch.flip(logits[len(batch) + index : len(batch) + index + 1], dims=[-1])
            case.flip_agreement = flip_agreement(_mask(view, size, model_info), _mask(mirrored, size, model_info))
            view = (view + mirrored) / 2
        probability = logits_to_probability(view, size)
        case.probability = probability[0, 0].numpy()
        case.mask = probability_to_mask(probability, cleanup=model_info.mask_cleanup)[0, 0].numpy()
        case.model = model_info


def _mask(logits: torch.Tensor, size, model_info) -> np.ndarray:
    return probability_to_mask(logits_to_probability(logits, size), cleanup=model_info.mask_cleanup)[0, 0].numpy()


class LesionSegmentationOperator(Operator):
    """Segments the skin lesion in each case with the exported model (ONNX Runtime or TorchScript), loaded once.

    Named input:
        cases: list of Case with ``rgb`` (H, W, 3) uint8.
    Named output:
        cases: the same list; ``ok`` cases now carry ``probability`` (H, W) float32 at the photo's size,
        ``mask`` (H, W) uint8 and ``model`` (name and version from the model's embedded metadata); with
        ``flip_tta`` also ``flip_agreement`` (Dice of the masks of the image and of its mirror image).

    ``precision`` (``"int8"`` or ``"fp32"``) picks the export from a model folder: on a CPU the int8 ONNX model
    where the folder holds one, unless ``"fp32"`` (see ``operators.model.resolve_model_file``).
    """

    def __init__(
        self,
        fragment: Fragment,
        *args,
        model_path: Path,
        batch_size: int = 1,
        flip_tta: bool = False,
        device: Optional[str] = None,
        precision: str = "int8",
        **kwargs,
    ):
        self.model_path = Path(model_path)
        self.flip_tta = bool(flip_tta)
        self.precision = precision
        self.batch_size = max(1, int(batch_size))
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self._model = None
        self.model_info = None
        self._logger = logging.getLogger(f"{__name__}.{type(self).__name__}")
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.input("cases")
        spec.output("cases")

    def start(self):
        # Once per run, not per chunk: a model load costs more than a batch.
        self._model, self.model_info = load_model(self.model_path, self.device, self.precision)
        runtime = "ONNX Runtime" if isinstance(self._model, OnnxRuntimeModel) else "TorchScript"
        self._logger.info(
            "model %s version %s, %s on %s, %s", self.model_info.name, self.model_info.version, runtime, self.device,
            self.model_info.precision,
        )

    def compute(self, op_input, op_output, context):
        cases: List[Case] = op_input.receive("cases")
        segment_cases(cases, self._model, self.model_info, self.device, self.batch_size, self.flip_tta)
        op_output.emit(cases, "cases")
