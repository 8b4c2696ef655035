# Copyright (c) the dermseg contributors. Apache-2.0.
"""Helpers the bundle's configs call by dotted path (``scripts.handlers.BestModelSaver`` ...).

``monai.bundle run`` puts the bundle root on ``sys.path`` before running, which makes this package importable
as ``scripts``; the modules here import nothing from it at package level so a config only pays for what it uses.
"""
