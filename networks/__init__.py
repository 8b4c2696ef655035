# Copyright (c) the dermseg contributors. Apache-2.0.
"""Networks of the dermseg skin-lesion segmentation plugin for MONAI.

MONAI has no network registry: bundle configs reach these classes by dotted path,
``{"_target_": "networks.RIBCUNet", ...}``, which resolves once this package is importable
(``pip install -e .`` of the project, or the bundle's ``run`` putting the project on ``sys.path``).
"""

from .ribcunet import BiConvGRUFusion, ConcatFusion, ConvGRUCell, DecoderLevel, DoubleConv, ResidualInception, RIBCUNet

__all__ = ["RIBCUNet", "ResidualInception", "DoubleConv", "ConvGRUCell", "BiConvGRUFusion", "ConcatFusion", "DecoderLevel"]
