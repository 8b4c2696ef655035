# Copyright (c) the dermseg contributors. Apache-2.0.
"""RIBCUNet: a U-Net with residual Inception blocks and bidirectional ConvGRU skip fusion.

The method is the one of "Residual Inception and Bidirectional ConvGRU Empowered Intelligent Segmentation for
Skin Lesion" (see ``training_bundle/docs/README.md``, References): the encoder's and decoder's double 3x3
convolutions become residual Inception blocks, and the plain concatenation of a skip connection with the
upsampled feature becomes a bidirectional ConvGRU over the two-step sequence (skip, upsampled).  Two switches
turn each idea off, so one class builds the paper's four ablation variants, the plain U-Net included.

Every block is written for ``spatial_dims`` 2 or 3 with MONAI's ``Conv``/``Pool``/``Norm`` factories, and the
whole network scripts with ``torch.jit.script``.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Union

import torch
import torch.nn as nn

from monai.networks.blocks import Convolution
from monai.networks.layers.factories import Conv, Pool
from monai.networks.layers.utils import get_act_layer, get_norm_layer

from .preprocessing import colour_constancy_layer

__all__ = [
    "FeatureBlock", "ResidualInception", "DoubleConv", "ConvGRUCell", "BiConvGRUFusion", "ConcatFusion", "DecoderLevel",
    "RIBCUNet",
]


def _conv3x3(spatial_dims: int, cin: int, cout: int, act, norm, dropout: Optional[float], bias: bool) -> Convolution:
    """The 3x3 unit both feature blocks are made of: convolution ("same" padding), normalisation, then the
    activation and dropout unless ``None`` (then the layer is left out, not an identity)."""
    return Convolution(spatial_dims, cin, cout, kernel_size=3, act=act, norm=norm, dropout=dropout, bias=bias)


class FeatureBlock(nn.Module):
    """The base of the level blocks :class:`ResidualInception` and :class:`DoubleConv`: one constructor, so a level
    builds either (the ``residual_inception`` switch).  A subclass makes its layers in ``build``, given the arguments.

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of the input.
        out_channels: channels of the output.
        act: activation type and arguments (MONAI ``Act`` factory).
        norm: normalisation type and arguments (MONAI ``Norm`` factory).
        dropout: dropout probability after the block's inner convolutions.
        bias: whether the convolutions have a bias (they are followed by normalisation, so off by default).

    Shapes:
        ``(B, in_channels, *S)`` to ``(B, out_channels, *S)``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        act: Union[str, tuple] = ("relu", {"inplace": True}),
        norm: Union[str, tuple] = "batch",
        dropout: float = 0.0,
        bias: bool = False,
    ) -> None:
        super().__init__()
        self.build(spatial_dims, in_channels, out_channels, act, norm, dropout, bias)

    def build(self, spatial_dims: int, in_channels: int, out_channels: int, act, norm, dropout: float, bias: bool) -> None:
        raise NotImplementedError


class ResidualInception(FeatureBlock):
    """Residual Inception block: ``m = act(concat(b1, b2, b3)(n) + shortcut(n))``, spatial size kept.

    Three parallel branches read the input ``n``:

    - ``b1``: a 1x1 convolution;
    - ``b2``: a 1x1 reduction, then a 3x3 convolution;
    - ``b3``: a 1x1 reduction, then two 3x3 convolutions (the receptive field of a 5x5 with fewer weights).

    Their outputs (``out_channels // 4``, ``out_channels // 4`` and the rest) are concatenated and added to the
    input; the shortcut is a 1x1 projection with normalisation where the channel count changes.  Every
    convolution is followed by normalisation; the activation follows each inner convolution and the sum.

    The 1x1 convolutions read the same input, so they run as two fused convolutions whose output channels are
    split afterwards: the same maths as separate convolutions (normalisation is per channel), fewer passes.
    Arguments and shapes: :class:`FeatureBlock`.
    """

    def build(self, spatial_dims: int, in_channels: int, out_channels: int, act, norm, dropout: float, bias: bool) -> None:
        if out_channels < 4:
            raise ValueError(f"ResidualInception needs out_channels >= 4 for its three branches, got {out_channels}.")
        b1 = out_channels // 4
        b2 = out_channels // 4
        b3 = out_channels - b1 - b2
        reduce = max(out_channels // 4, 1)
        self.project = in_channels != out_channels
        # The 1x1 convolutions that read the input run as two fused convolutions: the two reductions (which
        # are activated) and [branch-1 output | shortcut projection] (which are not, until after the sum).
        self.reduce_split = reduce
        self.reduce = Convolution(spatial_dims, in_channels, 2 * reduce, kernel_size=1, act=act, norm=norm, bias=bias)
        self.split_sizes: List[int] = [b1, out_channels] if self.project else [b1]
        self.pointwise = nn.Sequential(
            Conv[Conv.CONV, spatial_dims](in_channels, sum(self.split_sizes), kernel_size=1, bias=bias),
            get_norm_layer(norm, spatial_dims, sum(self.split_sizes)),
        )

        # the last convolution of each branch is activated only after the sum, like the pointwise branch
        self.branch2 = _conv3x3(spatial_dims, reduce, b2, None, norm, None, bias)
        self.branch3 = nn.Sequential(
            _conv3x3(spatial_dims, reduce, b3, act, norm, dropout, bias),
            _conv3x3(spatial_dims, b3, b3, None, norm, None, bias),
        )
        self.out_act = get_act_layer(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reduced = torch.split(self.reduce(x), self.reduce_split, dim=1)
        pointwise = torch.split(self.pointwise(x), self.split_sizes, dim=1)
        shortcut = pointwise[1] if self.project else x
        y = torch.cat([pointwise[0], self.branch2(reduced[0]), self.branch3(reduced[1])], dim=1)
        return self.out_act(y + shortcut)


class DoubleConv(FeatureBlock):
    """The plain U-Net unit: two 3x3 convolution, normalisation, activation layers (arguments: :class:`FeatureBlock`)."""

    def build(self, spatial_dims: int, in_channels: int, out_channels: int, act, norm, dropout: float, bias: bool) -> None:
        self.conv_0 = _conv3x3(spatial_dims, in_channels, out_channels, act, norm, dropout, bias)
        self.conv_1 = _conv3x3(spatial_dims, out_channels, out_channels, act, norm, dropout, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_1(self.conv_0(x))


class ConvGRUCell(nn.Module):
    """A convolutional GRU cell: the GRU's matrix products become convolutions (``*``; ``o`` is elementwise).

    .. code-block:: text

        z  = sigmoid(W_xz * x + b_z + W_hz * h)          update gate
        r  = sigmoid(W_xr * x + b_r + W_hr * h)          reset gate
        h~ = tanh(W_xh * x + b_h + r o (W_hh * h))       candidate
        h' = (1 - z) o h~ + z o h                        new state

    No work is spent on terms that are known to vanish.  A state of ``None`` is the all-zero initial state:
    then every ``W_h* * h`` is zero and the reset gate multiplies zero, so the step reduces to
    ``h' = (1 - sigmoid(W_xz * x + b_z)) o tanh(W_xh * x + b_h)`` and neither the recurrent convolutions nor
    the reset gate's input convolution run.  Otherwise the input convolutions run as two fused convolutions
    (``[z | candidate]`` and ``r``) and the three recurrent ones as one.  The biases sit on the input side only:
    a second bias on the recurrent side would add nothing but a term inside the reset product.

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of the input ``x``.
        hidden_channels: channels of the state ``h``.
        kernel_size: kernel size of all six convolutions ("same" padding).

    Shapes:
        ``x``: ``(B, in_channels, *S)``; ``h`` and the output: ``(B, hidden_channels, *S)``.
    """

    def __init__(self, spatial_dims: int, in_channels: int, hidden_channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"ConvGRUCell needs an odd kernel_size to keep the spatial size, got {kernel_size}.")
        conv_type = Conv[Conv.CONV, spatial_dims]
        pad = kernel_size // 2
        self.hidden_channels = hidden_channels
        self.conv_x_zc = conv_type(in_channels, 2 * hidden_channels, kernel_size, padding=pad, bias=True)  # [z | h~]
        self.conv_x_r = conv_type(in_channels, hidden_channels, kernel_size, padding=pad, bias=True)
        self.conv_h = conv_type(hidden_channels, 3 * hidden_channels, kernel_size, padding=pad, bias=False)  # [z | r | h~]

    def input_zc(self, x: torch.Tensor) -> torch.Tensor:
        """``[W_xz * x + b_z | W_xh * x + b_h]``: state-free, so callers may batch several inputs in one call."""
        return self.conv_x_zc(x)

    def input_r(self, x: torch.Tensor) -> torch.Tensor:
        """``W_xr * x + b_r``: needed only for steps from a non-zero state."""
        return self.conv_x_r(x)

    def first_step(self, x_zc: torch.Tensor) -> torch.Tensor:
        """The step from the all-zero state, given ``input_zc(x)``."""
        xz, xc = torch.chunk(x_zc, 2, dim=1)
        return (1.0 - torch.sigmoid(xz)) * torch.tanh(xc)

    def step(self, x_zc: torch.Tensor, x_r: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """The step from state ``h``, given ``input_zc(x)`` and ``input_r(x)``."""
        xz, xc = torch.chunk(x_zc, 2, dim=1)
        hz, hr, hc = torch.chunk(self.conv_h(h), 3, dim=1)
        z = torch.sigmoid(xz + hz)
        r = torch.sigmoid(x_r + hr)
        candidate = torch.tanh(xc + r * hc)
        return candidate + z * (h - candidate)  # = (1 - z) o candidate + z o h, one multiply fewer

    def forward(self, x: torch.Tensor, h: Optional[torch.Tensor] = None) -> torch.Tensor:
        if h is None:
            return self.first_step(self.input_zc(x))
        return self.step(self.input_zc(x), self.input_r(x), h)


class BiConvGRUFusion(nn.Module):
    """Fuse a skip feature with an upsampled feature by a bidirectional ConvGRU over the sequence (skip, up).

    .. code-block:: text

        h_fwd = GRU_fwd(up,   GRU_fwd(skip, 0))      reads skip, then up
        h_bwd = GRU_bwd(skip, GRU_bwd(up,   0))      reads up, then skip
        y     = tanh(W_fwd * h_fwd + W_bwd * h_bwd)

    ``W_fwd`` and ``W_bwd`` are 1x1 convolutions applied as one convolution of the concatenated states (the
    same maths).  Each direction's ``[z | candidate]`` input convolution runs once, batched over both sequence
    steps; the reset gate's only for the second step (the first starts from the zero state).
    This replaces the concatenation of a U-Net's skip connection; as in BCDU-Net, with GRU cells.

    Args:
        spatial_dims: 2 or 3.
        channels: channels of both inputs, of the hidden states and of the output.
        kernel_size: kernel size of the ConvGRU convolutions.

    Shapes:
        ``skip`` and ``up``: ``(B, channels, *S)``; output ``(B, channels, *S)``.
    """

    def __init__(self, spatial_dims: int, channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.forward_cell = ConvGRUCell(spatial_dims, channels, channels, kernel_size)
        self.backward_cell = ConvGRUCell(spatial_dims, channels, channels, kernel_size)
        self.combine = Conv[Conv.CONV, spatial_dims](2 * channels, channels, kernel_size=1, bias=True)

    def forward(self, skip: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        pair = torch.cat([skip, up], dim=0)  # chunk, not split by size, so exports keep a dynamic batch
        fwd_skip, fwd_up = torch.chunk(self.forward_cell.input_zc(pair), 2, dim=0)
        bwd_skip, bwd_up = torch.chunk(self.backward_cell.input_zc(pair), 2, dim=0)
        h_fwd = self.forward_cell.step(fwd_up, self.forward_cell.input_r(up), self.forward_cell.first_step(fwd_skip))
        h_bwd = self.backward_cell.step(bwd_skip, self.backward_cell.input_r(skip), self.backward_cell.first_step(bwd_up))
        return torch.tanh(self.combine(torch.cat([h_fwd, h_bwd], dim=1)))


class ConcatFusion(nn.Module):
    """The plain U-Net's skip fusion: channel concatenation, ``(B, C, *S), (B, C, *S)`` to ``(B, 2C, *S)``."""

    def forward(self, skip: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        return torch.cat([skip, up], dim=1)


def _level_blocks(
    residual_inception: bool,
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    act: Union[str, tuple],
    norm: Union[str, tuple],
    dropout: float,
) -> nn.Sequential:
    """The two feature blocks of one encoder or decoder level."""
    block = ResidualInception if residual_inception else DoubleConv
    if residual_inception:
        return nn.Sequential(
            block(spatial_dims, in_channels, out_channels, act, norm, dropout),
            block(spatial_dims, out_channels, out_channels, act, norm, dropout),
        )
    # DoubleConv already holds two convolutions: one unit is the plain U-Net's level
    return nn.Sequential(block(spatial_dims, in_channels, out_channels, act, norm, dropout))


class DecoderLevel(nn.Module):
    """One decoder level: 2x transposed convolution with normalisation (channels halve), fusion of the skip
    feature (bidirectional ConvGRU or concatenation), then the level's two feature blocks.

    Shapes:
        ``x``: ``(B, in_channels, *S)``, ``skip``: ``(B, out_channels, *2S)``; output ``(B, out_channels, *2S)``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        residual_inception: bool,
        bi_convgru: bool,
        act: Union[str, tuple],
        norm: Union[str, tuple],
        dropout: float,
    ) -> None:
        super().__init__()
        self.up = Convolution(
            spatial_dims,
            in_channels,
            out_channels,
            strides=2,
            kernel_size=2,
            act=act,
            norm=norm,
            bias=False,
            is_transposed=True,
            padding=0,
            output_padding=0,
        )
        self.fusion = BiConvGRUFusion(spatial_dims, out_channels) if bi_convgru else ConcatFusion()
        fused_channels = out_channels if bi_convgru else 2 * out_channels
        self.blocks = _level_blocks(residual_inception, spatial_dims, fused_channels, out_channels, act, norm, dropout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.fusion(skip, self.up(x)))


class RIBCUNet(nn.Module):
    """U-Net with residual Inception blocks and bidirectional ConvGRU skip fusion (RIBCU-Net).

    Five levels and four 2x downsamplings. Each encoder level holds two residual Inception blocks (then a
    2x2 max-pool); each decoder level a 2x2 transposed convolution with normalisation, the fusion of the skip
    feature with the upsampled one by a bidirectional ConvGRU, and two residual Inception blocks. A 1x1
    convolution gives ``out_channels`` logits at the input's size.

    The switches give the paper's ablations: both off is a plain U-Net (double 3x3 convolutions,
    concatenated skips); ``residual_inception`` alone; ``bi_convgru`` alone; both on is the full model.

    Args:
        spatial_dims: 2 for images, 3 for volumes.
        in_channels: input channels (3 for RGB).
        out_channels: output channels (1 lesion logit; apply a sigmoid for the probability).
        channels: five feature widths, top to bottom (the paper's ``(64, 128, 256, 512, 1024)``).
        residual_inception: residual Inception blocks instead of double 3x3 convolutions.
        bi_convgru: bidirectional ConvGRU skip fusion instead of concatenation.
        act: activation type and arguments (MONAI ``Act`` factory).
        norm: normalisation type and arguments (MONAI ``Norm`` factory).
        dropout: dropout probability inside the feature blocks.
        colour_constancy: ``"shades_of_grey"`` puts :class:`networks.preprocessing.ShadesOfGrey` before the
            first convolution (in the exported graph too); ``"none"`` (the paper) feeds the input as it is.

    Shapes:
        ``(B, in_channels, *S)`` to ``(B, out_channels, *S)``; every side of ``S`` must be a multiple of 16.

    Example::

        net = RIBCUNet(spatial_dims=2, in_channels=3, out_channels=1, channels=(16, 32, 64, 128, 256))
        logits = net(torch.rand(1, 3, 256, 256))  # (1, 1, 256, 256)
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 3,
        out_channels: int = 1,
        channels: Sequence[int] = (64, 128, 256, 512, 1024),
        residual_inception: bool = True,
        bi_convgru: bool = True,
        act: Union[str, tuple] = ("relu", {"inplace": True}),
        norm: Union[str, tuple] = "batch",
        dropout: float = 0.0,
        colour_constancy: str = "none",
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        channels = tuple(int(c) for c in channels)
        if len(channels) != 5:
            raise ValueError(f"channels must give the five level widths, got {channels}.")
        self.spatial_dims = spatial_dims
        self.size_multiple = 2 ** (len(channels) - 1)
        self.colour_constancy = colour_constancy_layer(colour_constancy)

        self.encoder = nn.ModuleList()
        cin = in_channels
        for width in channels:
            self.encoder.append(_level_blocks(residual_inception, spatial_dims, cin, width, act, norm, dropout))
            cin = width
        self.pool = Pool[Pool.MAX, spatial_dims](kernel_size=2, stride=2)
        self.decoder = nn.ModuleList(
            [
                DecoderLevel(spatial_dims, channels[i + 1], channels[i], residual_inception, bi_convgru, act, norm, dropout)
                for i in range(len(channels) - 2, -1, -1)
            ]
        )
        self.head = Conv[Conv.CONV, spatial_dims](channels[0], out_channels, kernel_size=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spatial = x.shape[2:]
        for side in spatial:
            if side % self.size_multiple != 0:
                raise ValueError(
                    "RIBCUNet needs every spatial side to be a multiple of "
                    + str(self.size_multiple)
                    + ", got input of spatial size "
                    + str(list(spatial))
                    + "; resize or pad the input."
                )
        x = self.colour_constancy(x)
        skips: List[torch.Tensor] = []
        n_levels = len(self.encoder)
        for i, level in enumerate(self.encoder):
            x = level(x)
            if i < n_levels - 1:
                skips.append(x)
                x = self.pool(x)
        for i, level in enumerate(self.decoder):
            x = level(x, skips[n_levels - 2 - i])
        return self.head(x)
