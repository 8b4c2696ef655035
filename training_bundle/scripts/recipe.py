# Copyright (c) the dermseg contributors. Apache-2.0.
"""The training parts ``train.json`` and ``train_recipe.json`` build from: cheap CPU steps (bf16 autocast,
channels_last), a per-iteration warm-up + cosine learning rate, an EMA of the weights, and progressive resizing.

Each is a plain object the configs instantiate by dotted path; the handlers among them attach to the trainer in
``train.json``'s ``run`` (their order does not matter).
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from monai.engines.utils import default_prepare_batch

__all__ = [
    "MixedPrecision", "warmup_cosine", "EMAUpdate", "ema_multi_avg_fn", "ProgressiveResize", "autocast_dtype", "native_bf16",
]

_DTYPES = {"fp32": None, "float32": None, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}


@functools.lru_cache(maxsize=None)  # the hardware does not change: asked once, not every training step
def native_bf16(device_type: str) -> bool:
    """Whether ``device_type`` computes bfloat16 in hardware.  A CPU without AVX-512 BF16 or AMX (an AVX2-only
    one, say) emulates it: on such a 2-core machine a bf16 training step took about three times as long as fp32
    (``benchmarks/train_step.py``; the bundle's docs)."""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device_type == "cpu":
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return False


def autocast_dtype(precision: str, device_type: str = "cpu") -> Optional[torch.dtype]:
    """``"auto"`` / ``"bf16"`` / ``"fp16"`` / ``"fp32"`` to the autocast dtype on ``device_type`` (None for fp32).
    ``"auto"`` is bf16 where the device computes it natively (:func:`native_bf16`), else fp32."""
    if str(precision).lower() == "auto":
        return torch.bfloat16 if native_bf16(device_type) else None
    try:
        return _DTYPES[str(precision).lower()]
    except KeyError:
        raise ValueError(f"precision must be \"auto\" or one of {sorted(_DTYPES)}, got {precision!r}") from None


class MixedPrecision(nn.Module):
    """Run ``network`` under ``torch.autocast`` on whatever device the input is on, with a channels_last input,
    and return float32 logits, so the loss and the metrics are computed in float32.

    MONAI's own ``amp`` flag autocasts on CUDA only (with fp16 and a gradient scaler); this wrapper is what
    makes a CPU step run in bfloat16, which with channels_last more than halves a step's time on a CPU with
    AVX-512 BF16 and multiplies it on one without (``"auto"`` picks).  bf16 needs no gradient scaling.  The
    wrapper holds no parameters of its own: optimise, checkpoint and export ``network`` itself.

    Args:
        network: the segmentation network, ``(B, C, H, W)`` to ``(B, 1, H, W)``.
        precision: ``"auto"`` (bf16 where the input's device computes it natively, else fp32), ``"bf16"``,
            ``"fp32"`` (no autocast) or ``"fp16"`` (inference only: fp16 training needs a gradient scaler, so
            train in fp16 with MONAI's ``amp`` and ``"fp32"`` here).
        channels_last: convert the input to channels_last (convert the network's weights once, beforehand).
    """

    def __init__(self, network: nn.Module, precision: str = "auto", channels_last: bool = True) -> None:
        super().__init__()
        autocast_dtype(precision)  # an unknown precision fails here, not at the first step
        self.network = network
        self.precision = str(precision)
        self.channels_last = bool(channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        dtype = autocast_dtype(self.precision, x.device.type)
        with torch.autocast(device_type=x.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            y = self.network(x)
        return y.float()


def warmup_cosine(total_steps: int, warmup_steps: int = 0, start_factor: float = 0.01, final_factor: float = 0.01) -> Callable[[int], float]:
    """Learning-rate factor for ``LambdaLR`` stepped every iteration: linear warm-up from ``start_factor`` to 1
    over ``warmup_steps``, then cosine decay to ``final_factor`` at ``total_steps`` (held there after).

    A plain function, not a callable object, because ``LambdaLR`` saves a callable object's attributes in its
    state and restores them on resume: the schedule would keep the length the run started with under any later
    ``--epochs``.  A function leaves the length to the config, so a resumed run with a larger ``--epochs``
    stretches the cosine (the rate steps up to where the longer curve is at that iteration)."""
    if total_steps < 1 or not 0 <= warmup_steps < total_steps:
        raise ValueError(f"need 0 <= warmup_steps < total_steps, got {warmup_steps} and {total_steps}")
    total_steps, warmup_steps, start_factor, final_factor = int(total_steps), int(warmup_steps), float(start_factor), float(final_factor)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return start_factor + (1.0 - start_factor) * step / warmup_steps
        progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
        return final_factor + (1.0 - final_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def ema_multi_avg_fn(decay: float, warmup: bool = True):
    """The EMA step for ``torch.optim.swa_utils.AveragedModel(multi_avg_fn=...)``: ``ema += (1 - d) * (w - ema)``
    with ``d = decay``, or with ``warmup`` ``d = min(decay, (1 + n) / (10 + n))`` after ``n`` updates (the
    warm-up of TensorFlow's ``ExponentialMovingAverage(num_updates=...)``).

    Why the warm-up: trained from scratch, the average starts at the random initialisation, and at a fixed decay
    of 0.998 that start still held 10% of it after 5 epochs of 227 steps.  Its batch-norm variances (1 at
    initialisation, a median of 0.007-0.01 in the outermost layers by then) dominated the averaged ones, and the
    average predicted lesion everywhere (validation Jaccard 0.318-0.319 after epochs 2-5, while the raw weights
    scored 0.68 after epoch 4).  With the warm-up the initialisation's share is below 0.01% after 10 steps, and
    the decay reaches the recipe's 0.998 after about 4,500.  A fine-tune's average starts at the pretrained
    weights, which are worth keeping: it runs without (``warmup=False``).
    """
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
    if not warmup:
        return torch.optim.swa_utils.get_ema_multi_avg_fn(decay)

    @torch.no_grad()
    def update(averaged: list, current: list, num_updates: torch.Tensor) -> None:
        d = min(decay, (1.0 + float(num_updates)) / (10.0 + float(num_updates)))
        if torch.is_floating_point(averaged[0]):
            torch._foreach_lerp_(averaged, current, 1.0 - d)
        else:  # integer buffers (batch norm's num_batches_tracked)
            for a, c in zip(averaged, current):
                a.copy_(a * d + c * (1.0 - d))

    return update


class EMAUpdate:
    """Update an exponential moving average of the weights after every optimiser step.

    ``ema`` is a ``torch.optim.swa_utils.AveragedModel`` built with ``use_buffers=True`` (batch-norm statistics
    are averaged too, so the average needs no re-estimation pass); its first update copies the network, so it
    starts from the weights a fine-tune loaded, not from the initialisation it was built with.  Put ``ema`` in
    the checkpoint: a resumed run continues the same average.
    """

    def __init__(self, ema: torch.optim.swa_utils.AveragedModel, network: nn.Module) -> None:
        self.ema, self.network = ema, network

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine=None) -> None:
        self.ema.update_parameters(self.network)


class ProgressiveResize:
    """The trainer's ``prepare_batch``: resize each training batch to the size its epoch's stage trains at.

    ``schedule`` lists ``[first_epoch, [height, width]]`` stages, e.g. ``[[1, [128, 128]], [11, [192, 192]],
    [21, [256, 256]]]``.  The dataset is cached and augmented once at the model's input size; a batch is shrunk
    (bilinear with antialiasing, as ``networks.preprocessing`` shrinks a photo; masks by area, thresholded at
    0.5) only in the stages below it.  The stage follows the trainer's epoch, so a resumed run picks up at the
    right size; validation always runs at the model's input size.
    """

    def __init__(self, schedule: Sequence[Tuple[int, Sequence[int]]]) -> None:
        stages = sorted((int(first), tuple(int(s) for s in size)) for first, size in schedule)
        if not stages or stages[0][0] > 1:
            raise ValueError(f"the schedule must start at epoch 1, got {schedule!r}")
        self.stages = stages
        self.size: Tuple[int, ...] = stages[0][1]

    def size_at(self, epoch: int) -> Tuple[int, ...]:
        return [size for first, size in self.stages if first <= epoch][-1]

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_STARTED, lambda e: setattr(self, "size", self.size_at(e.state.epoch)))

    def __call__(self, batchdata, device=None, non_blocking: bool = False, **kwargs):
        image, label = default_prepare_batch(batchdata, device, non_blocking, **kwargs)
        if tuple(image.shape[-2:]) != self.size:
            image = F.interpolate(image, size=self.size, mode="bilinear", align_corners=False, antialias=True)
            label = (F.interpolate(label.float(), size=self.size, mode="area") >= 0.5).to(label.dtype)
        return image, label
