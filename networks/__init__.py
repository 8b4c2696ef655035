# Copyright (c) the dermseg contributors. Apache-2.0.
"""Networks of the dermseg skin-lesion segmentation plugin for MONAI, and the rules every layer shares
(``networks.preprocessing``: the model's input contract; ``networks.durable``: atomic file writes).

MONAI has no network registry: bundle configs reach these classes by dotted path,
``{"_target_": "networks.RIBCUNet", ...}``, which resolves once this package is importable
(``pip install -e .`` of the project, or the bundle's ``run`` putting the project on ``sys.path``).  The
classes are imported on first use, so a module that needs only ``networks.durable`` does not load torch.
"""

import importlib

__all__ = ["RIBCUNet", "ResidualInception", "DoubleConv", "ConvGRUCell", "BiConvGRUFusion", "ConcatFusion", "DecoderLevel"]


def __getattr__(name: str):
    if name in __all__:
        return getattr(importlib.import_module(".ribcunet", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
