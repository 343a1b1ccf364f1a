"""Task families: environments, policies and the training loop each family needs.

Importing this package imports every module in it, so a task file that calls `register_task` is
available by name without touching any other file.
"""

import importlib
import pkgutil

from tasks.base import TASKS, Family, RunResult, RunSpec, TaskEntry, check_compatible, get_task, register_task

for _info in pkgutil.iter_modules(__path__):
    if not _info.name.startswith("_") and _info.name != "base":
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["TASKS", "Family", "RunResult", "RunSpec", "TaskEntry", "check_compatible", "get_task", "register_task"]
