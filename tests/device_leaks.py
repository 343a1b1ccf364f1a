"""`device_leaks`: the recorder of "a tensor made without a device", shared by the `tests/test_device_*.py` files.

There may be no GPU where the tests run, so a training loop's device-correctness is checked on the CPU. Inside
`with device_leaks(watched, ...) as found:`, `found` collects one line, "file:line function: what", for each of:

- a tensor factory in `FACTORIES` (`torch.zeros`, `torch.tensor`, `torch.arange`, ...) called without a device
  (`device=` missing or None): on a CUDA run its tensor would land on the CPU beside the loop's;
- a `torch.Generator()` made without a device (no positional device and no `device=`): a CPU generator cannot drive a
  CUDA sampler;
- `.numpy()` of a tensor that no `.cpu()` returned: on CUDA it raises.

Only calls made *directly* from a function of a `watched` file count (the calling frame's file is compared), except that
two kinds of maker are exempt from the first two checks (never from `.numpy()`):

- constructors: `nn.Module.__init__` (their parameters and buffers move with the module's `.to`);
- `host`: functions named there, builders of host tensors from Python lists that their callers move to the device.

What it cannot see, so what review has to read instead:

- `torch.from_numpy` (and the legacy `torch.Tensor(...)`/`torch.FloatTensor(...)` constructors) are not torch
  functions: no mode sees them, so that their result is moved with `.to(dev)` is not checked;
- a factory called from a file that is not watched (a helper in `algorithms/`, torch itself) on the loop's behalf;
- a factory given the wrong device (`device="cpu"` written out): only that a device is named is checked;
- factories outside `FACTORIES` (the `*_like` ones inherit their argument's device and need none);
- NumPy conversions that do not call `.numpy()` from a watched file (`np.asarray(t)` goes through torch's own
  `__array__`); and `.to("cpu").numpy()` is reported although it is correct: the loops use `.cpu()`;
- a generator class bound before the block (`from torch import Generator`): only `torch.Generator` is patched, and
  put back when the block ends.
"""

from __future__ import annotations

import contextlib
import sys
import weakref
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import FrameType, ModuleType

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

FACTORIES = frozenset({torch.zeros, torch.ones, torch.empty, torch.full, torch.arange, torch.rand, torch.randn,
                       torch.randint, torch.randperm, torch.linspace, torch.logspace, torch.eye, torch.tensor,
                       torch.as_tensor})
"""Tensor factories that place their result on the default device (the CPU) unless given one."""


class _Watch:
    """Which frames count, and the list they are written to."""

    def __init__(self, watched: Iterable[ModuleType | str | Path], host: tuple[str, ...]):
        self.files = {str(Path(w.__file__ if isinstance(w, ModuleType) else w).resolve()) for w in watched}
        self.host = frozenset(host)
        self.found: list[str] = []
        self._resolved: dict[str, str] = {}  # co_filename -> resolved path

    def watches(self, frame: FrameType) -> bool:
        name = frame.f_code.co_filename
        if name not in self._resolved:
            self._resolved[name] = str(Path(name).resolve())
        return self._resolved[name] in self.files

    def exempt_maker(self, frame: FrameType) -> bool:
        name = frame.f_code.co_name
        if name in self.host:
            return True
        return name == "__init__" and isinstance(frame.f_locals.get("self"), nn.Module)

    def record(self, frame: FrameType, what: str) -> None:
        code = frame.f_code
        self.found.append(f"{Path(code.co_filename).name}:{frame.f_lineno} {code.co_name}: {what}")

    def made(self, frame: FrameType, what: str) -> None:
        if self.watches(frame) and not self.exempt_maker(frame):
            self.record(frame, f"{what} without device=")


class _Mode(TorchFunctionMode):
    def __init__(self, watch: _Watch):
        super().__init__()
        self.watch = watch
        # tensors returned by .cpu(), by id (Tensor's == is elementwise); an entry goes when its tensor does
        self.from_cpu: weakref.WeakValueDictionary[int, torch.Tensor] = weakref.WeakValueDictionary()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func is torch.Tensor.cpu:
            self.from_cpu[id(out)] = out
        elif func in FACTORIES:
            if kwargs.get("device") is None:
                self.watch.made(sys._getframe(1), f"torch.{func.__name__}")
        elif func is torch.Tensor.numpy:
            caller = sys._getframe(1)
            if self.from_cpu.get(id(args[0])) is not args[0] and self.watch.watches(caller):
                self.watch.record(caller, ".numpy() of a tensor not brought to the CPU")
        return out


@contextlib.contextmanager
def device_leaks(watched: Iterable[ModuleType | str | Path], *, host: tuple[str, ...] = ()) -> Iterator[list[str]]:
    """Within the block, record the device leaks (see the module's docstring) of calls made from `watched` (modules or
    file paths). Exempt from the factory and generator checks: `nn.Module` constructors and the functions named in
    `host`. Yields the list of "file:line function: what" lines."""
    watch = _Watch(watched, tuple(host))

    class Generator(torch.Generator):
        def __new__(cls, *args, **kwargs):
            if not args and kwargs.get("device") is None:
                watch.made(sys._getframe(1), "torch.Generator")
            return super().__new__(cls, *args, **kwargs)

    real = torch.Generator
    torch.Generator = Generator
    try:
        with _Mode(watch):
            yield watch.found
    finally:
        torch.Generator = real
