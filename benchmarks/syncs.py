"""Host synchronisations per training step, counted on the CPU: what makes a GPU step wait for the host.

A `torch.overrides.TorchFunctionMode` sees every tensor operation of a step and counts the ones that,
on a GPU, make the host wait for the device: reading a value (`.item()`, `.tolist()`, `.numpy()`,
`bool()` / `int()` / `float()` of a tensor), copying to the host (`.cpu()`, `.to("cpu")`), and the
operations whose output shape depends on the data (`nonzero`, `masked_select`, `unique`, indexing
with a boolean mask). On a CPU run every tensor is on the host, so the counter tells the device's
tensors from the host's as a GPU run would have them: a tensor copied to the host, made on the host
(a factory call without a `device`), or computed from host tensors only is a host tensor, and an
operation on it costs no synchronisation. Each counted call is kept with the place in the code that
made it, so that a count can be read.

    python -m benchmarks.syncs            # every rule's count on a tiny BERT, batch 8
"""

from __future__ import annotations

import argparse
import traceback
from collections import Counter
from typing import Any, Callable, Optional

import torch
from torch.overrides import TorchFunctionMode

READS = {"item", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__"}
DATA_DEPENDENT = {"nonzero", "masked_select", "unique", "unique_consecutive", "argwhere", "nonzero_static"}
FACTORIES = {"zeros", "ones", "empty", "full", "arange", "tensor", "as_tensor", "randperm", "rand", "randn", "randint",
             "zeros_like", "ones_like", "empty_like", "full_like", "linspace"}
_HOST = "_ksam_host"


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in _tensors(item)]
    if isinstance(value, dict):
        return [t for item in value.values() for t in _tensors(item)]
    return []


def _is_host(tensor: torch.Tensor) -> bool:
    return bool(getattr(tensor, _HOST, False))


def _mark(value: Any) -> None:
    for tensor in _tensors(value):
        try:
            setattr(tensor, _HOST, True)
        except (AttributeError, RuntimeError):
            pass


class HostSyncCounter(TorchFunctionMode):
    """Counts the calls that synchronise a GPU step with its host (see the module's docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, str]] = []  # (operation, where in ksam_hf / transformers / torch)

    def _count(self, name: str) -> None:
        frames = [f for f in traceback.extract_stack()[:-2]
                  if "/overrides.py" not in f.filename and "benchmarks/syncs.py" not in f.filename]

        def short(frame: traceback.FrameSummary) -> str:
            return f"{frame.filename.split('/site-packages/')[-1].split('/main/')[-1]}:{frame.lineno}"

        ours = next((short(f) for f in reversed(frames) if "ksam_hf" in f.filename), None)
        inner = short(frames[-1]) if frames else "?"
        self.calls.append((name, inner if ours in (None, inner) else f"{inner} (from {ours})"))

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: Optional[dict] = None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        inputs = _tensors(args) + _tensors(kwargs)
        on_device = [t for t in inputs if not _is_host(t)]
        result = func(*args, **kwargs)
        if name in READS or name in DATA_DEPENDENT:
            if inputs and not _is_host(inputs[0]):
                self._count(name)
        elif name == "__getitem__" and len(args) > 1 and any(
                t.dtype == torch.bool for t in _tensors(args[1])) and not _is_host(args[0]):
            self._count("boolean-mask indexing")
        elif name in ("cpu", "to") and self._to_host(name, args, kwargs):
            if inputs and not _is_host(inputs[0]):
                self._count(".cpu()" if name == "cpu" else '.to("cpu")')
            if inputs and result is inputs[0]:  # on this CPU machine the copy is the tensor itself: mark a view
                with torch._C.DisableTorchFunction():  # no recursion into this mode
                    result = result.view_as(result)
            _mark(result)
            return result
        if name in FACTORIES and not on_device and str(kwargs.get("device", "cpu")).startswith("cpu") \
                and "device" not in kwargs:
            _mark(result)
        elif inputs and not on_device:
            _mark(result)
        return result

    @staticmethod
    def _to_host(name: str, args: tuple, kwargs: dict) -> bool:
        """`.cpu()`, or `.to("cpu")` spelled with the string: a copy to the host. `.to(device)` with a
        device object is read as the move to the training device (on this CPU machine both are the
        CPU; on a GPU the second is a copy to the device, which does not make the host wait)."""
        if name == "cpu":
            return True
        target = kwargs.get("device", args[1] if len(args) > 1 else None)
        return isinstance(target, str) and target.startswith("cpu")

    def summary(self) -> Counter:
        return Counter(f"{name} at {place}" for name, place in self.calls)


def count_step(step: Callable[[], None]) -> HostSyncCounter:
    """The synchronisations of one call of `step`."""
    with HostSyncCounter() as counter:
        step()
    return counter


def main(argv: Optional[list[str]] = None) -> dict[str, int]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.syncs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--where", action="store_true", help="also list each counted call and its place")
    args = parser.parse_args(argv)
    from benchmarks.sync_cases import RULES, rule_step

    counts = {}
    for rule in RULES:
        step = rule_step(rule, args.batch_size)
        step()  # the first step sets up (the model's own loss is checked once), as a run's first step does
        counter = count_step(step)
        counts[rule] = len(counter.calls)
        print(f"{rule:<28} {counts[rule]:>3} host synchronisations a step")
        if args.where:
            for line, times in sorted(counter.summary().items()):
                print(f"    {times} x {line}")
    return counts


if __name__ == "__main__":
    main()
