# Copyright (c) the dermseg contributors. Apache-2.0.
"""Post-processing transforms of the bundle, thin dictionary wrappers over ``networks.preprocessing``."""

from __future__ import annotations

from typing import Dict, Hashable, Mapping

import torch

from monai.config import KeysCollection
from monai.transforms import MapTransform

from networks.preprocessing import logits_to_probability

__all__ = ["LogitsToOriginalSized"]


class LogitsToOriginalSized(MapTransform):
    """Replace ``(1, h, w)`` logits with ``(1, H, W)`` lesion probabilities at the image's original size.

    The size comes from ``size_key`` (what ``PrepareRGBd`` stored as ``"image_original_size"``), and the maths
    is :func:`networks.preprocessing.logits_to_probability`, the same call the deploy app makes.
    """

    def __init__(self, keys: KeysCollection, size_key: str = "image_original_size", allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.size_key = size_key

    def __call__(self, data: Mapping[Hashable, object]) -> Dict[Hashable, object]:
        d = dict(data)
        size = [int(s) for s in torch.as_tensor(d[self.size_key]).reshape(-1)[:2]]
        for key in self.key_iterator(d):
            logits = torch.as_tensor(d[key])
            d[key] = logits_to_probability(logits[None], size)[0]
        return d
