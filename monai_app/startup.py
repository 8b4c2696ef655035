# Copyright (c) the dermseg contributors. Apache-2.0.
"""What the app's programs do before anything imports MONAI: leave out the training bundle's packages.

MONAI imports ignite, matplotlib and nibabel at its own import wherever they are installed.  The app and the
edge service never use them; the development environment has them for the training bundle, a MAP
(``monai_app/requirements.txt``) does not.  Marked absent, MONAI sees what it sees in a MAP, and a program starts
about a quarter sooner (the README's Performance section).  Only the programs call this, as
``__main__``: a process that imports the app's modules (the tests, the bundle) keeps every package.
"""

from __future__ import annotations

import sys

__all__ = ["TRAINING_ONLY_PACKAGES", "leave_out_training_packages"]

TRAINING_ONLY_PACKAGES = ("ignite", "matplotlib", "nibabel")


def leave_out_training_packages() -> None:
    """Make ``import`` of each training-only package fail in this process, as where it is not installed; a package
    already imported stays."""
    for name in TRAINING_ONLY_PACKAGES:
        sys.modules.setdefault(name, None)
