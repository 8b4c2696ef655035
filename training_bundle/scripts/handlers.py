# Copyright (c) the dermseg contributors. Apache-2.0.
"""Ignite handlers of the bundle: best-model saving that survives a resume, the per-epoch training log, and the
prediction writer and scorer of ``evaluate.json``/``inference.json``.

All of them are safe under ``torchrun``: they run on every rank (so collectives line up and their state stays
identical everywhere) and only rank 0 touches the file system.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import PIL.Image
import torch

import torch.distributed as dist
from ignite.engine import Engine, Events

from monai.handlers import from_engine

from networks.durable import atomic_write_with

from .metrics import PER_IMAGE_METRICS, confusion_counts, image_scores, summarise
from .outputs import read_training_log, segmentation_filename

__all__ = ["BestModelSaver", "TrainingLog", "PredictionWriter", "SegmentationScorer"]

logger = logging.getLogger(__name__)


def _unwrap(network: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside DataParallel/DistributedDataParallel, so saved keys never start with ``module.``."""
    return network.module if isinstance(network, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)) else network


def _is_main_process() -> bool:
    # torch.distributed, not ignite.distributed: ignite's first get_rank() creates a process group, a collective
    # that deadlocks when only rank 0 makes it
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


class BestModelSaver:
    """Save the network's ``state_dict`` to ``filepath`` whenever the validator's key metric improves.

    Unlike ``CheckpointSaver(save_key_metric=True)``, its best score is part of its ``state_dict``: put it in
    the resume checkpoint and a resumed run only replaces ``model.pt`` with a model better than every earlier
    epoch's, not with the first model it validates.

    Args:
        network: the trained network (DDP wrappers are unwrapped).
        filepath: where to write the best weights (the bundle's ``models/model.pt``).
        metric_name: the metric to compare; default the validator's key metric.
        mode: ``"max"`` (Jaccard, Dice) or ``"min"`` (a loss).
        min_delta: improvement needed to count as better.
    """

    def __init__(self, network: torch.nn.Module, filepath: str, metric_name: Optional[str] = None, mode: str = "max", min_delta: float = 0.0):
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.network = network
        self.filepath = str(filepath)
        self.metric_name = metric_name
        self.sign = 1.0 if mode == "max" else -1.0
        self.min_delta = float(min_delta)
        self.best_metric = -math.inf
        self.best_epoch = -1

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        name = self.metric_name or engine.state.key_metric_name
        value = float(engine.state.metrics[name])
        if not math.isfinite(value) or self.sign * value <= self.best_metric + self.min_delta:
            return
        self.best_metric, self.best_epoch = self.sign * value, int(engine.state.epoch)
        if _is_main_process():
            # write then rename, so an interrupted run never leaves a truncated model.pt behind
            Path(self.filepath).parent.mkdir(parents=True, exist_ok=True)
            state = _unwrap(self.network).state_dict()
            atomic_write_with(self.filepath, lambda tmp: torch.save(state, tmp))
            logger.info(f"epoch {self.best_epoch}: new best {name}={value:.4f}, saved {self.filepath}")

    def state_dict(self) -> Dict[str, float]:
        return {"best_metric": self.best_metric, "best_epoch": self.best_epoch}

    def load_state_dict(self, state_dict: Dict[str, float]) -> None:
        self.best_metric = float(state_dict["best_metric"])
        self.best_epoch = int(state_dict["best_epoch"])


class TrainingLog:
    """Append one row per epoch to a CSV: learning rate, mean training loss, the trainer's and the validator's
    metrics.  It is what ``evaluate.json``'s report plots as training curves (the paper's Fig. 6).

    Attach it to the trainer after the ``ValidationHandler`` (so the validation metrics are this epoch's) and
    before the ``LrScheduleHandler`` (so the logged learning rate is the one this epoch trained with).  On a
    resumed run, rows of epochs that are trained again replace the old ones.

    Args:
        filepath: the CSV to write (``train_log.csv`` in the output folder).
        optimizer: to read the learning rate from.
        validator: the validation engine, or None.
        loss_transform: how to read the loss from the trainer's output.
    """

    def __init__(
        self,
        filepath: str,
        optimizer: Optional[torch.optim.Optimizer] = None,
        validator: Optional[Engine] = None,
        loss_transform: Callable = from_engine(["loss"], first=True),
    ):
        self.filepath = str(filepath)
        self.optimizer = optimizer
        self.validator = validator
        self.loss_transform = loss_transform
        self._loss_sum = 0.0
        self._loss_count = 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._accumulate)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _reset(self, engine: Engine) -> None:
        self._loss_sum, self._loss_count = 0.0, 0

    def _accumulate(self, engine: Engine) -> None:
        loss = self.loss_transform(engine.state.output)
        self._loss_sum += float(loss.item() if isinstance(loss, torch.Tensor) else loss)
        self._loss_count += 1

    def __call__(self, engine: Engine) -> None:
        # every rank saw its own shard: average over all of them (a collective, so every rank runs this handler)
        totals = torch.tensor([self._loss_sum, float(self._loss_count)], dtype=torch.float64)
        if dist.is_available() and dist.is_initialized():
            totals = totals.to(_collective_device())
            dist.all_reduce(totals)
            totals = totals.cpu()
        row: Dict[str, Any] = {"epoch": int(engine.state.epoch)}
        if self.optimizer is not None:
            row["lr"] = self.optimizer.param_groups[0]["lr"]
        row["train_loss"] = float(totals[0] / totals[1]) if totals[1] > 0 else math.nan
        for source in (engine, self.validator):
            if source is not None:
                row.update({k: _scalar(v) for k, v in source.state.metrics.items() if _scalar(v) is not None})
        if _is_main_process():
            self._write(row)

    def _write(self, row: Dict[str, Any]) -> None:
        rows = [r for r in read_training_log(self.filepath) if int(r["epoch"]) < row["epoch"]]
        rows.append(row)
        fields: List[str] = []
        for r in rows:
            fields += [k for k in r if k not in fields]
        Path(self.filepath).parent.mkdir(parents=True, exist_ok=True)

        def write(tmp: str) -> None:
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=fields)
                writer.writeheader()
                writer.writerows(rows)

        atomic_write_with(self.filepath, write)


def _collective_device() -> torch.device:
    """NCCL reduces CUDA tensors only; gloo CPU ones."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _scalar(value: Any) -> Optional[float]:
    if isinstance(value, torch.Tensor):
        return float(value.item()) if value.numel() == 1 else None
    if isinstance(value, (int, float, np.floating, np.integer)):
        return float(value)
    return None


def _as_numpy_2d(value: Any) -> np.ndarray:
    array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    array = np.squeeze(array)
    if array.ndim != 2:
        raise ValueError(f"expected a single-channel 2D map, got shape {array.shape}")
    return array


def _items(engine: Engine) -> List[tuple]:
    """(batch item, output item) pairs of a decollated iteration."""
    batch, output = engine.state.batch, engine.state.output
    if isinstance(output, dict):  # decollate=False: not supported by these writers
        raise ValueError("set the evaluator's `decollate` to True")
    return list(zip(batch, output))


class PredictionWriter:
    """Write each image's mask (PNG 0/255, ``<stem>_segmentation.png``) and optionally its lesion probability
    (8-bit PNG, ``<stem>_probability.png``, 255 = probability 1) at the image's original size.

    Args:
        output_dir: folder for the PNGs.
        image_path_key: batch key holding the source image path.
        mask_key: output key of the binary mask ``(1, H, W)``.
        probability_key: output key of the probability map ``(1, H, W)``, or None to skip probabilities.
    """

    def __init__(self, output_dir: str, image_path_key: str = "image_path", mask_key: str = "pred", probability_key: Optional[str] = "prob"):
        self.output_dir = str(output_dir)
        self.image_path_key = image_path_key
        self.mask_key = mask_key
        self.probability_key = probability_key

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if not _is_main_process():
            return
        os.makedirs(self.output_dir, exist_ok=True)
        for batch_item, output_item in _items(engine):
            image_path = batch_item[self.image_path_key]
            mask = _as_numpy_2d(output_item[self.mask_key]) > 0
            PIL.Image.fromarray(mask.astype(np.uint8) * 255).save(os.path.join(self.output_dir, segmentation_filename(image_path)))
            if self.probability_key:
                prob = np.clip(_as_numpy_2d(output_item[self.probability_key]).astype(np.float64), 0.0, 1.0)
                PIL.Image.fromarray(np.rint(prob * 255.0).astype(np.uint8)).save(
                    os.path.join(self.output_dir, segmentation_filename(image_path, "probability"))
                )


class SegmentationScorer:
    """Score each prediction against its ground truth at the original image size and, when the evaluator
    completes, write ``metrics.json`` (set-level scores), ``per_image.csv`` and the report.

    Args:
        output_dir: folder for the results.
        image_path_key: batch key holding the source image path (names the rows).
        label_path_key: batch key holding the ground-truth path (the report's overlays read it), if any.
        mask_key: output key of the binary mask ``(1, H, W)``.
        label_key: output key of the ground truth ``(H, W)`` or ``(1, H, W)`` at the original size.
        predictions_dir: where :class:`PredictionWriter` put the masks (the report's overlays read them).
        train_log: ``train_log.csv`` of the training run, plotted in the report when it exists.
        report: whether to write ``report.md`` and its figures.
        extra_info: anything to record in ``metrics.json`` (network, image size, checkpoint ...).
    """

    def __init__(
        self,
        output_dir: str,
        image_path_key: str = "image_path",
        label_path_key: str = "label_path",
        mask_key: str = "pred",
        label_key: str = "label",
        predictions_dir: Optional[str] = None,
        train_log: Optional[str] = None,
        report: bool = True,
        extra_info: Optional[Dict[str, Any]] = None,
    ):
        self.output_dir = str(output_dir)
        self.image_path_key = image_path_key
        self.label_path_key = label_path_key
        self.mask_key = mask_key
        self.label_key = label_key
        self.predictions_dir = predictions_dir
        self.train_log = train_log
        self.report = report
        self.extra_info = dict(extra_info or {})
        self.rows: List[Dict[str, Any]] = []
        self.summary: Dict[str, float] = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, lambda _: self.rows.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._score)
        engine.add_event_handler(Events.COMPLETED, self)

    def _score(self, engine: Engine) -> None:
        for batch_item, output_item in _items(engine):
            image_path = str(batch_item[self.image_path_key])
            mask, label = _as_numpy_2d(output_item[self.mask_key]), _as_numpy_2d(output_item[self.label_key])
            counts = confusion_counts(mask > 0, label > 0)
            row: Dict[str, Any] = {"image": Path(image_path).stem, "image_path": image_path, "height": mask.shape[0], "width": mask.shape[1]}
            if self.label_path_key in batch_item:
                row["label_path"] = str(batch_item[self.label_path_key])
            row.update(counts)
            row.update(image_scores(counts))
            self.rows.append(row)

    def __call__(self, engine: Engine) -> None:
        if not self.rows or not _is_main_process():
            return
        self.summary = summarise(self.rows)
        os.makedirs(self.output_dir, exist_ok=True)
        with open(os.path.join(self.output_dir, "metrics.json"), "w") as f:
            json.dump({"metrics": self.summary, **self.extra_info}, f, indent=2, default=str)
        fields = ["image", "height", "width", *PER_IMAGE_METRICS, "tp", "fp", "fn", "tn", "image_path"]
        with open(os.path.join(self.output_dir, "per_image.csv"), "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(sorted(self.rows, key=lambda r: r["image"]))
        logger.info("test metrics: " + ", ".join(f"{k}={v:.4f}" for k, v in self.summary.items() if k != "num_images"))
        if self.report:
            from .report import write_report  # matplotlib only when a report is asked for

            write_report(
                self.output_dir,
                rows=self.rows,
                summary=self.summary,
                predictions_dir=self.predictions_dir,
                train_log=self.train_log,
                extra_info=self.extra_info,
            )
