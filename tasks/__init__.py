"""Task families: environments, policies and the training loop each family needs.

Asking this package for its registry (`TASKS`, `get_task`) imports every module in it, so a task file
that calls `register_task` is available by name without touching any other file. Importing the
package alone loads nothing heavy (see `algorithms/__init__.py` for why).
"""

import importlib
import pkgutil

_FROM_BASE = ("TASKS", "Family", "RunResult", "RunSpec", "TaskEntry", "check_compatible", "get_task", "register_task")
_REGISTRY_NAMES = ("TASKS", "get_task", "check_compatible")


def load_all() -> None:
    """Import every task module once, so each `register_task` has run."""
    for info in pkgutil.iter_modules(__path__):  # a module already imported is only looked up
        if not info.name.startswith("_") and info.name != "base":
            importlib.import_module(f"{__name__}.{info.name}")


def __getattr__(name: str):
    if name not in _FROM_BASE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from tasks import base

    if name in _REGISTRY_NAMES:
        load_all()
    return getattr(base, name)


__all__ = [*_FROM_BASE, "load_all"]
