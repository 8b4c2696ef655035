# Copyright (c) the dermseg contributors. Apache-2.0.
"""What the app's programs do before anything imports MONAI: leave out what MONAI imports that they never use.

``import monai`` imports every MONAI module, and with them every optional package that is installed.  The app
and the edge service use none of ``UNUSED_BY_THE_APP``: marked absent, each is skipped as where it is not
installed (MONAI imports them through ``optional_import``), and a program starts sooner (the README's
Performance section).  Only the programs call this, as ``__main__``: a process that imports the app's modules
(the tests, the bundle) keeps every package.
"""

from __future__ import annotations

import sys

__all__ = ["UNUSED_BY_THE_APP", "leave_out_unused_packages"]

# name -> why MONAI imports it; the first three are in the development environment for the training bundle only
UNUSED_BY_THE_APP = {
    "ignite": "MONAI's engines and handlers (training)",
    "matplotlib": "MONAI's plots (training)",
    "nibabel": "MONAI's NIfTI readers (training)",
    # a MAP installs scipy for scipy.ndimage; scipy.signal (with scipy.stats) is about a second of imports alone
    "scipy.signal": "MONAI's ultrasound confidence map",
    # installed with Holoscan; looking for the CUDA runtime costs about 0.35 s even on a CPU.  The app's arrays are
    # NumPy, and on a GPU it runs the model through torch, so Holoscan's CuPy interop never sees one
    "cupy": "MONAI's CuPy array conversions",
    "tensorboard": "MONAI's TensorBoard plots (training)",
}


def leave_out_unused_packages() -> None:
    """Import MONAI without ``UNUSED_BY_THE_APP``: importing one fails in this process from now on, as where it is
    not installed (one already imported stays)."""
    for name in UNUSED_BY_THE_APP:
        sys.modules.setdefault(name, None)
    import monai  # noqa: F401  (every MONAI module, now, while the packages above are absent)
