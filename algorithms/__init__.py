"""The update rules: pure functions of tensors -> (loss, metrics), and the methods built from them.

Asking this package for its `REGISTRY` imports every module in it, so a method file that uses
`@register` is available by name without touching any other file. Nothing heavy is imported before
that: `import algorithms.config` (the typed-config helpers the CLI needs to parse its input) stays
free of torch, so `emrl --help` and a rejected name answer at once.
"""

import importlib
import pkgutil

_FROM_BASE = ("REGISTRY", "Batch", "Method", "Needs", "register")


def load_all() -> None:
    """Import every method module once, so each `@register` has run."""
    for info in pkgutil.iter_modules(__path__):  # a module already imported is only looked up
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


def __getattr__(name: str):
    if name not in _FROM_BASE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from algorithms import base

    if name == "REGISTRY":
        load_all()
    return getattr(base, name)


__all__ = [*_FROM_BASE, "load_all"]
