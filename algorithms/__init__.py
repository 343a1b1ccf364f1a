"""The update rules: pure functions of tensors -> (loss, metrics), and the methods built from them.

Importing this package imports every module in it, so a method file that uses `@register` is
available by name without touching any other file.
"""

import importlib
import pkgutil

from algorithms.base import REGISTRY, Batch, Method, Needs, register

for _info in pkgutil.iter_modules(__path__):
    if not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["REGISTRY", "Batch", "Method", "Needs", "register"]
