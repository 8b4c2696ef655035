# Copyright (c) the dermseg contributors. Apache-2.0.
"""The bundle's own transforms: colour and vignetting augmentations MONAI lacks, and the post-processing wrapper over
``networks.preprocessing``."""

from __future__ import annotations

import math
from typing import Dict, Hashable, Mapping

import torch

from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform

from networks.preprocessing import logits_to_probability

__all__ = ["RandHueSaturationd", "RandVignetted", "LogitsToOriginalSized"]

# RGB <-> YIQ (NTSC): Y is luma, (I, Q) the chroma plane, where a rotation shifts hue and a scaling saturation
_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ)


class _RandImageTransformd(RandomizableTransform, MapTransform):
    """Draws the random parameters once per call and gives every image under ``keys`` the same change, so the
    images of one sample stay consistent; a subclass draws in ``randomize`` and says in ``change`` what it does
    to one image (a tensor)."""

    def __init__(self, keys: KeysCollection, prob: float, allow_missing_keys: bool) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)

    def change(self, image: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> Dict[Hashable, torch.Tensor]:
        d = dict(data)
        self.randomize()
        if not self._do_transform:
            return d
        for key in self.key_iterator(d):
            d[key] = self.change(torch.as_tensor(d[key]))
        return d


class RandHueSaturationd(_RandImageTransformd):
    """Shift the hue and scale the saturation of ``(3, H, W)`` RGB images in [0, 1], one 3x3 colour matrix each.

    Dermoscopes and cameras differ in white balance and colour rendering; MONAI's intensity transforms act on
    values, not on hue.  The hue turns by up to ``hue`` of a full circle either way and the saturation scales
    by a factor in ``[1 - saturation, 1 + saturation]``, luma unchanged; the result is clipped to [0, 1].
    """

    def __init__(self, keys: KeysCollection, prob: float = 0.5, hue: float = 0.05, saturation: float = 0.3, allow_missing_keys: bool = False):
        super().__init__(keys, prob, allow_missing_keys)
        self.hue, self.saturation = float(hue), float(saturation)
        self._matrix = torch.eye(3)

    def randomize(self, data=None) -> None:
        super().randomize(None)
        angle = self.R.uniform(-self.hue, self.hue) * 2.0 * math.pi
        scale = self.R.uniform(1.0 - self.saturation, 1.0 + self.saturation)
        c, s = math.cos(angle) * scale, math.sin(angle) * scale
        chroma = torch.tensor([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])
        self._matrix = _YIQ_TO_RGB @ chroma @ _RGB_TO_YIQ

    def change(self, image: torch.Tensor) -> torch.Tensor:
        matrix = self._matrix.to(image.device, image.dtype)
        return torch.einsum("ij,jhw->ihw", matrix, image).clamp_(0.0, 1.0)


class RandVignetted(_RandImageTransformd):
    """Darken ``(C, H, W)`` images towards their corners, as a dermoscope's optics or a phone's lens do.

    The gain is ``clip(1 - strength * (r / r0) ** 2, 0, 1)`` with ``r`` the distance from a centre shifted by up
    to ``max_shift`` of the half-size, ``r0`` the half-diagonal, and ``strength`` drawn from ``strength_range``
    (1 blacks out the corners).
    """

    def __init__(self, keys: KeysCollection, prob: float = 0.5, strength_range=(0.2, 0.8), max_shift: float = 0.15, allow_missing_keys: bool = False):
        super().__init__(keys, prob, allow_missing_keys)
        self.strength_range = (float(strength_range[0]), float(strength_range[1]))
        self.max_shift = float(max_shift)
        self._strength, self._centre = 0.0, (0.0, 0.0)

    def randomize(self, data=None) -> None:
        super().randomize(None)
        self._strength = self.R.uniform(*self.strength_range)
        self._centre = (self.R.uniform(-self.max_shift, self.max_shift), self.R.uniform(-self.max_shift, self.max_shift))

    def change(self, image: torch.Tensor) -> torch.Tensor:
        h, w = image.shape[-2:]
        y = torch.linspace(-1.0, 1.0, h, device=image.device)[:, None] - self._centre[0]
        x = torch.linspace(-1.0, 1.0, w, device=image.device)[None, :] - self._centre[1]
        gain = (1.0 - self._strength * (x * x + y * y) / 2.0).clamp_(0.0, 1.0)
        return image * gain.to(image.dtype)


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
