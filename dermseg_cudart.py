# Copyright (c) the dermseg contributors. Apache-2.0.
"""Make ``libcudart.so.13`` loadable for Holoscan on machines without a CUDA toolkit.

``monai-deploy-app-sdk`` is built on Holoscan, whose extension modules link ``libcudart.so.13``; and once the SDK
is installed, ``import monai`` itself imports ``monai.deploy`` and so Holoscan.  On a machine without a system
CUDA toolkit that import fails, for the app and for ``python -m monai.bundle`` alike.  The
``nvidia-cuda-runtime`` wheel ships the library; loading it once, globally, before anything imports Holoscan
lets the dynamic loader resolve the name from then on, whatever the entry point.

``make setup`` installs a ``dermseg_cudart.pth`` file into the virtual environment that imports this module at
interpreter start.  A system library, where there is one, is preferred.
"""

import ctypes
import glob
import os
import site
import sys

SONAME = "libcudart.so.13"


def preload_cudart() -> str:
    """Load ``libcudart.so.13`` with ``RTLD_GLOBAL``; return where it came from ("" if nowhere)."""
    try:
        ctypes.CDLL(SONAME, mode=ctypes.RTLD_GLOBAL)
        return "system"
    except OSError:
        pass
    roots = list(dict.fromkeys(site.getsitepackages() + [p for p in sys.path if p]))
    for root in roots:
        for path in sorted(glob.glob(os.path.join(root, "nvidia", "cu13", "lib", SONAME))):
            try:
                ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
                return path
            except OSError:
                continue
    return ""


if os.name == "posix" and not os.environ.get("DERMSEG_NO_CUDART_PRELOAD"):
    preload_cudart()
