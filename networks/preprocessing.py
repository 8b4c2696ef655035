# Copyright (c) the dermseg contributors. Apache-2.0.
"""The model's input contract, in one place for training (the bundle) and serving (the app).

The exported model takes float RGB in [0, 1], NCHW, at the square size its metadata states (``MODEL_INPUT_SIZE``
for one that states none: every version before 0.5.0 was 256 px; 0.5.0 and later are 128), and returns one channel of
lesion logits at that size.  Photos of any size are squashed to that square (no aspect-ratio padding: the ISIC
data the model learns from were squashed the same way), and the logits are resized back to the photo's size
before the sigmoid, so a mask lines up with its source pixel for pixel.

Arrays are ``(H, W, 3)`` uint8 as every image library reads a photo (rows first), never MONAI's ``PILReader``
``(W, H)`` order.  ``torch.nn.functional.interpolate`` does the resizing everywhere, with antialiasing when
shrinking, so the bundle's configs and the app's operator give bit-identical model inputs.
"""

from __future__ import annotations

from typing import Dict, Hashable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch
import torch.nn as nn
import torch.nn.functional as F

from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform

__all__ = [
    "MODEL_INPUT_SIZE",
    "rgb_to_model_input",
    "mask_to_model_target",
    "logits_to_probability",
    "probability_to_mask",
    "CLEANUPS",
    "clean_mask",
    "mask_bounding_box",
    "mask_cleanup_of",
    "read_rgb",
    "read_mask",
    "LoadRGBd",
    "LoadMaskd",
    "PrepareRGB",
    "PrepareRGBd",
    "PrepareMaskd",
    "COLOUR_CONSTANCY",
    "ShadesOfGrey",
    "colour_constancy_layer",
]

MODEL_INPUT_SIZE: Tuple[int, int] = (256, 256)
# Photos with more than this many times the model's pixels are resized in uint8 (rgb_to_model_input): camera
# photos, not dermoscopy (765 x 575 is 7 times 256 x 256) nor the 512-px training copies (4 times).
_UINT8_RESIZE_FACTOR = 16


def read_rgb(path) -> np.ndarray:
    """Read a photo file (JPEG, PNG, ...) as ``(H, W, 3)`` uint8 RGB, upright as its EXIF orientation says.

    Grey, palette, RGBA (alpha dropped) and 16-bit images are converted to 8-bit RGB.  Pillow's
    decompression-bomb guard stays on: an image declaring more than ``PIL.Image.MAX_IMAGE_PIXELS`` pixels
    raises before its pixels are decoded.
    """
    with PIL.Image.open(path) as im:
        im = PIL.ImageOps.exif_transpose(im)
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            # 16-bit grey: scale to 8 bits by the type's range, not by clipping
            im = PIL.Image.fromarray((np.asarray(im, dtype=np.uint32) >> 8).astype(np.uint8))
        return np.asarray(im.convert("RGB"))


def read_mask(path) -> np.ndarray:
    """Read a mask file as ``(H, W)`` uint8 in {0, 1} (ISIC masks hold 0 and 255; anything non-zero is lesion)."""
    with PIL.Image.open(path) as im:
        return (np.asarray(im.convert("L")) > 0).astype(np.uint8)


def _as_hwc_uint8_tensor(image) -> torch.Tensor:
    """Check an ``(H, W, 3)`` uint8 array or tensor and return it as a tensor without copying where possible."""
    # a read-only array (np.asarray of a PIL image) is copied: torch cannot wrap it safely
    array = torch.as_tensor(np.require(image, requirements=["C", "W"]) if isinstance(image, np.ndarray) else image)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"expected an RGB image of shape (H, W, 3), got shape {tuple(array.shape)}")
    if array.dtype != torch.uint8:
        raise ValueError(f"expected uint8 RGB pixels, got {array.dtype}")
    return array


def rgb_to_model_input(image, size: Sequence[int] = MODEL_INPUT_SIZE) -> torch.Tensor:
    """``(H, W, 3)`` uint8 RGB to the model's ``(3, *size)`` float32 input in [0, 1].

    A photo much larger than ``size`` (a camera's 3024 x 2016) is resized in uint8, channels last, and scaled
    after: the same antialiased bilinear filter within 1/255 (the uint8 rounding), at a fifth of the time and
    without a float copy of the whole photo.  Smaller photos are scaled first, then resized in float.
    """
    hwc = _as_hwc_uint8_tensor(image)
    if hwc.shape[0] * hwc.shape[1] > _UINT8_RESIZE_FACTOR * int(np.prod(size)):
        chw = hwc.permute(2, 0, 1).unsqueeze(0).contiguous(memory_format=torch.channels_last)
        chw = F.interpolate(chw, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
        return chw[0].float().div_(255.0).contiguous()
    chw = hwc.permute(2, 0, 1).unsqueeze(0).float().div_(255.0)
    if tuple(chw.shape[-2:]) != tuple(size):
        chw = F.interpolate(chw, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
    return chw[0].clamp_(0.0, 1.0)


def mask_to_model_target(mask, size: Sequence[int] = MODEL_INPUT_SIZE) -> torch.Tensor:
    """``(H, W)`` mask (0 = background, anything else = lesion) to a ``(1, *size)`` float32 target in {0, 1}.

    Nearest-neighbour keeps the target binary, as the loss expects.
    """
    target = (torch.as_tensor(np.asarray(mask)) > 0).float()
    if target.ndim != 2:
        raise ValueError(f"expected a mask of shape (H, W), got shape {tuple(target.shape)}")
    target = target[None, None]
    if tuple(target.shape[-2:]) != tuple(size):
        target = F.interpolate(target, size=tuple(size), mode="nearest-exact")
    return target[0]


def logits_to_probability(logits: torch.Tensor, original_size: Sequence[int]) -> torch.Tensor:
    """Model logits ``(B, 1, h, w)`` to lesion probabilities ``(B, 1, H, W)`` at the photo's size.

    The logits are resized (bilinear) before the sigmoid: a smoother boundary than resizing probabilities.
    """
    if logits.ndim != 4:
        raise ValueError(f"expected logits of shape (B, 1, h, w), got {tuple(logits.shape)}")
    if tuple(logits.shape[-2:]) != tuple(original_size):
        logits = F.interpolate(logits.float(), size=tuple(int(s) for s in original_size), mode="bilinear", align_corners=False)
    return torch.sigmoid(logits.float())


def probability_to_mask(probability: torch.Tensor, threshold: float = 0.5, cleanup: str = "none") -> torch.Tensor:
    """Lesion probabilities ``(..., H, W)`` to a uint8 mask in {0, 1} of the same shape, each ``(H, W)`` slice
    cleaned up by :func:`clean_mask` (the model's ``mask_cleanup``, :func:`mask_cleanup_of`)."""
    mask = probability >= threshold
    if cleanup != "none":
        flat = mask.reshape(-1, *mask.shape[-2:]).cpu().numpy()
        mask = torch.from_numpy(np.stack([clean_mask(m, cleanup) for m in flat]).reshape(tuple(mask.shape)))
    return mask.to(torch.uint8)


CLEANUPS = ("none", "largest", "fill_holes", "largest+fill_holes")
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def clean_mask(mask: np.ndarray, cleanup: str = "none") -> np.ndarray:
    """A ``(H, W)`` mask cleaned up, as bool: ``"largest"`` keeps its largest 8-connected component,
    ``"fill_holes"`` fills enclosed background, ``"largest+fill_holes"`` does both, ``"none"`` nothing.  The
    bundle's ``scripts/tune_threshold.py`` measures each on the validation split."""
    if cleanup not in CLEANUPS:
        raise ValueError(f"cleanup must be one of {CLEANUPS}, got {cleanup!r}")
    mask = np.asarray(mask) > 0
    if cleanup == "none":
        return mask
    from scipy import ndimage  # only where a clean-up is asked for

    if "largest" in cleanup and mask.any():
        labels, count = ndimage.label(mask, structure=_EIGHT_CONNECTED)
        if count > 1:
            mask = labels == (np.argmax(np.bincount(labels.ravel())[1:]) + 1)
    if "fill_holes" in cleanup:
        mask = _fill_holes(mask)
    return mask


def mask_bounding_box(mask: np.ndarray) -> Optional[Tuple[slice, slice]]:
    """The smallest ``(rows, columns)`` slices holding every pixel of a ``(H, W)`` mask; None for an empty mask.
    Steps that only change the lesion or what it encloses (hole filling, the overlay's tint and outline) work
    inside it: on a camera photo the lesion is a fraction of the pixels."""
    rows = np.flatnonzero(np.any(mask, axis=1))
    if rows.size == 0:
        return None
    columns = np.flatnonzero(np.any(mask, axis=0))
    return slice(rows[0], rows[-1] + 1), slice(columns[0], columns[-1] + 1)


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """``scipy.ndimage.binary_fill_holes(mask)`` (background 4-connected to the border stays background, the rest
    becomes lesion) by one labelling of the background, not its repeated dilations, which take seconds on a
    camera photo; and only inside the lesion's bounding box, which holds every hole: the background outside it
    reaches the border, and so does any background on the box's edge, next to it."""
    from scipy import ndimage

    box = mask_bounding_box(mask)
    if box is None:
        return mask
    inside = mask[box]
    labels, count = ndimage.label(~inside)  # 4-connected, as binary_fill_holes propagates the background
    if count == 0:
        return mask
    hole = np.ones(count + 1, dtype=bool)
    hole[0] = False
    hole[np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])] = False
    filled = mask.copy()
    filled[box] = inside | hole[labels]
    return filled


def mask_cleanup_of(metadata: Mapping) -> str:
    """The clean-up a model's masks get, from its bundle ``metadata.json``:
    ``network_data_format.outputs.pred.mask_cleanup`` (one of :data:`CLEANUPS`), ``"none"`` where absent.  The
    bundle's evaluation and the app both read it here, so a model is scored as it is served."""
    try:
        cleanup = metadata["network_data_format"]["outputs"]["pred"].get("mask_cleanup", "none")
    except (KeyError, TypeError, AttributeError):
        return "none"
    if cleanup not in CLEANUPS:
        raise ValueError(f"metadata states mask_cleanup {cleanup!r}, not one of {CLEANUPS}")
    return cleanup


class _ReadPathsd(MapTransform):
    """Replace file paths under ``keys`` with what the subclass's ``read`` makes of each."""

    @staticmethod
    def read(path) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, data: Mapping[Hashable, object]) -> Dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.read(d[key])
        return d


class LoadRGBd(_ReadPathsd):
    """Replace file paths under ``keys`` with ``(H, W, 3)`` uint8 arrays read by :func:`read_rgb`."""

    read = staticmethod(read_rgb)


class LoadMaskd(_ReadPathsd):
    """Replace file paths under ``keys`` with ``(H, W)`` uint8 masks read by :func:`read_mask`."""

    read = staticmethod(read_mask)


class PrepareRGB(Transform):
    """MONAI transform form of :func:`rgb_to_model_input`."""

    def __init__(self, size: Sequence[int] = MODEL_INPUT_SIZE) -> None:
        self.size = tuple(size)

    def __call__(self, image) -> torch.Tensor:
        return rgb_to_model_input(image, self.size)


class _ToModelSized(MapTransform):
    """Shared shape of the dictionary transforms below: :meth:`convert` each key's value at ``size``."""

    def __init__(self, keys: KeysCollection, size: Sequence[int] = MODEL_INPUT_SIZE, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.size = tuple(size)

    def convert(self, d: Dict[Hashable, object], key: Hashable) -> None:
        raise NotImplementedError

    def __call__(self, data: Mapping[Hashable, object]) -> Dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            self.convert(d, key)
        return d


class PrepareRGBd(_ToModelSized):
    """Dictionary form of :class:`PrepareRGB`; keeps the photo's ``(H, W)`` under ``"<key>_original_size"``."""

    def convert(self, d: Dict[Hashable, object], key: Hashable) -> None:
        image = d[key]
        d[f"{key}_original_size"] = torch.tensor(np.asarray(image).shape[:2])
        d[key] = rgb_to_model_input(image, self.size)


class PrepareMaskd(_ToModelSized):
    """Dictionary form of :func:`mask_to_model_target`."""

    def convert(self, d: Dict[Hashable, object], key: Hashable) -> None:
        d[key] = mask_to_model_target(d[key], self.size)


COLOUR_CONSTANCY = ("none", "shades_of_grey")


class ShadesOfGrey(nn.Module):
    """Shades-of-grey colour constancy (Finlayson and Trezzi, 2004) as the network's first layer.

    Each image's illuminant is estimated per channel as the Minkowski ``p``-norm mean of its pixels,
    ``e_c = mean(x_c ** p) ** (1 / p)``, and each channel is divided by it, with ``e`` scaled to the norm of
    a neutral grey ``(1, 1, 1)``.  A global cast from another dermoscope's light or a camera's white balance,
    and the overall exposure, are removed before the first convolution; the output is clamped back to [0, 1].
    It lives inside the exported graph, so every runtime that serves the model applies it too.

    Shapes:
        ``(B, C, *S)`` float in [0, 1] to the same; statistics per image and channel, in float32.
    """

    def __init__(self, p: float = 6.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p = float(p)
        self.eps = float(eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        dims: List[int] = list(range(2, x.ndim))
        illuminant = x.pow(self.p).mean(dim=dims, keepdim=True).pow(1.0 / self.p)
        # scaled so that its root mean square over the channels is 1, as for a neutral grey (1, 1, 1)
        illuminant = illuminant * torch.rsqrt(illuminant.pow(2).mean(dim=1, keepdim=True) + self.eps)
        return (x / (illuminant + self.eps)).clamp(0.0, 1.0)


def colour_constancy_layer(name: str) -> nn.Module:
    """The input layer named by a ``colour_constancy`` setting: ``"shades_of_grey"`` or ``"none"`` (identity)."""
    if name not in COLOUR_CONSTANCY:
        raise ValueError(f"colour_constancy must be one of {COLOUR_CONSTANCY}, got {name!r}")
    return ShadesOfGrey() if name == "shades_of_grey" else nn.Identity()
