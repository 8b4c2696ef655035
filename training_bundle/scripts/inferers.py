# Copyright (c) the dermseg contributors. Apache-2.0.
"""Test-time flip averaging for ``evaluate.json``/``inference.json`` (switch ``test_time_flips``)."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from monai.inferers import Inferer

__all__ = ["FlipAveragingInferer"]


class FlipAveragingInferer(Inferer):
    """Average the network's logits over flipped copies of the input, each flipped back.

    Dermoscopy has no canonical orientation (the training augmentation flips too), so the flipped views are
    equally valid inputs.  ``flips`` lists the spatial dims of each view (``[]`` is the image as is); the default
    ``[[]]`` is a plain forward pass.  Logits are averaged, so the result feeds ``logits_to_probability`` as usual.
    """

    def __init__(self, flips: Sequence[Sequence[int]] = ((),)) -> None:
        super().__init__()
        self.flips = [tuple(int(d) for d in f) for f in flips] or [()]

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        total = None
        for dims in self.flips:
            x = torch.flip(inputs, dims) if dims else inputs
            y = network(x, *args, **kwargs)
            y = torch.flip(y, dims) if dims else y
            total = y if total is None else total + y
        return total / len(self.flips)
