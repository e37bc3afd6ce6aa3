"""How `step_time` measures: interleaved timed rounds, the peak memory of one step, a profiled step
read through the library's own `ksam/*` labels, and the cost of SAM's vector maths."""

from __future__ import annotations

import gc
import json
import os
import tempfile
import time
from typing import Any, Callable, Optional, Protocol

import torch

from .common import Batch, median, synchronize
from .runners import MethodRunner

try:
    import resource
except ImportError:  # not on Windows
    resource = None

LIBRARY_PHASES = ("ksam/rank", "ksam/ascent", "ksam/descent", "ksam/restore")
"""The `record_function` regions KSAMTrainer's step emits (ksam_hf.trainer, ksam_hf.sharpness); none
lies inside another."""


class Runner(Protocol):
    name: str

    def step(self, batch: Batch) -> None: ...


# ----------------------------------------------------------------------------------------- timing
def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt if resource is not None else 0


def timed_step(runner: Runner, batch: Batch, device: torch.device) -> tuple[float, int]:
    """Seconds of one step, the device synchronised before and after; and the process's minor page
    faults during it (fresh memory touched for the first time: on CPU, large tensors that the
    allocator maps anew every step)."""
    synchronize(device)
    faults = _minor_faults()
    start = time.perf_counter()
    runner.step(batch)
    synchronize(device)
    return time.perf_counter() - start, _minor_faults() - faults


def run_rounds(runners: list[Runner], batches: list[Batch], warmup: int, steps: int, device: torch.device,
               log: Callable[[str], None]) -> tuple[dict[str, list[float]], dict[str, list[int]]]:
    """Round-robin: one step of every runner per round, on the round's batch, the order rotated by
    one each round so that no runner always follows the same neighbour and a drift of the machine's
    speed falls on all alike; `warmup` untimed rounds first. The garbage collector runs between
    rounds, not inside them. Returns each runner's step times and page faults, in round order."""
    times: dict[str, list[float]] = {r.name: [] for r in runners}
    faults: dict[str, list[int]] = {r.name: [] for r in runners}
    total = warmup + steps
    started = time.perf_counter()
    for round_index in range(total):
        batch = batches[round_index % len(batches)]
        shift = round_index % len(runners)
        gc.collect()
        gc.disable()
        try:
            for runner in runners[shift:] + runners[:shift]:
                seconds, page_faults = timed_step(runner, batch, device)
                if round_index >= warmup:
                    times[runner.name].append(seconds)
                    faults[runner.name].append(page_faults)
        finally:
            gc.enable()
        elapsed = time.perf_counter() - started
        log(f"round {round_index + 1}/{total} ({'warm-up' if round_index < warmup else 'timed'}) "
            f"elapsed {elapsed:.0f}s, left ~{elapsed / (round_index + 1) * (total - round_index - 1):.0f}s")
    return times, faults


# ----------------------------------------------------------------------------------------- memory
def cpu_step_peak(step: Callable[[], None]) -> float:
    """Peak, over one step, of the bytes allocated by torch's CPU allocator during that step and not
    yet freed (live bytes at the step's start, e.g. weights and optimizer state, are not counted):
    the running sum of the profiler's allocation / free events. oneDNN/MKL scratch memory that does
    not go through torch's allocator is not seen."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    live = peak = 0
    for _, nbytes in sorted(_memory_events(prof)):
        live += nbytes
        peak = max(peak, live)
    return float(peak)


def _memory_events(prof: Any) -> list[tuple[int, int]]:
    """(time, signed bytes) of every CPU allocation and free the profiler saw: from the profiler's
    event list (a private API), else from its exported Chrome trace."""
    try:
        events = [(e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                  if e.name() == "[memory]" and str(e.device_type()).endswith("CPU")]
        if events:
            return events
    except Exception:  # noqa: BLE001 - private API
        pass
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            trace = json.load(f)
    return [(e["ts"], int(e["args"]["Bytes"])) for e in trace.get("traceEvents", [])
            if e.get("name") == "[memory]" and e.get("args", {}).get("Device Type") == 0]


def cuda_step_peak(step: Callable[[], None], device: torch.device) -> float:
    """Peak bytes allocated on the device during one step, above what was allocated at its start."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    start = torch.cuda.memory_allocated(device)
    step()
    torch.cuda.synchronize(device)
    return float(torch.cuda.max_memory_allocated(device) - start)


def measure_memory(runners: list[Runner], batch: Batch, device: torch.device) -> dict[str, float]:
    """One more step per runner on `batch`, with its peak step memory (bytes) recorded."""
    peaks = {}
    for runner in runners:
        gc.collect()
        step = lambda: runner.step(batch)  # noqa: E731
        peaks[runner.name] = cuda_step_peak(step, device) if device.type == "cuda" else cpu_step_peak(step)
    return peaks


# ----------------------------------------------------------------------------------------- profiling
def profile_step(runner: MethodRunner, batch: Batch, device: torch.device) -> dict[str, Any]:
    """torch.profiler over one step (after two untimed ones, to warm it): the inclusive time of
    each labelled region, the library's own `ksam/*` and the loop's `step/*`, what of
    `training_step` lies outside the `ksam/*` regions (input preparation, moving to w + e), and the
    top ops by self time."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(2):
        runner.step(batch)
    synchronize(device)
    on_cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda else [])
    with profile(activities=activities, record_shapes=False) as prof:
        runner.step(batch, profiled=True)
        synchronize(device)
    averages = prof.key_averages()

    def self_time(event: Any) -> float:
        return getattr(event, "self_device_time_total", 0) if on_cuda else event.self_cpu_time_total

    phases = {e.key: {"cpu_total_ms": e.cpu_time_total / 1e3, "count": e.count}
              | ({"device_total_ms": getattr(e, "device_time_total", 0) / 1e3} if on_cuda else {})
              for e in averages if e.key.startswith(("ksam/", "step/"))}
    library_ms = sum(phases[key]["cpu_total_ms"] for key in LIBRARY_PHASES if key in phases)
    outside: Optional[float] = phases["step/training_step"]["cpu_total_ms"] - library_ms \
        if any(key in phases for key in LIBRARY_PHASES) else None
    ops = [{"op": e.key, "count": e.count, "self_cpu_ms": e.self_cpu_time_total / 1e3,
            "cpu_total_ms": e.cpu_time_total / 1e3}
           | ({"self_device_ms": getattr(e, "self_device_time_total", 0) / 1e3} if on_cuda else {})
           for e in sorted(averages, key=lambda e: -self_time(e))
           if not e.key.startswith(("ksam/", "step/"))][:40]
    table = averages.table(sort_by="self_cuda_time_total" if on_cuda else "self_cpu_time_total",
                           row_limit=40, max_name_column_width=60)
    return {"phases": phases, "training_step_outside_ksam_phases_ms": outside, "top_ops": ops, "table": table}


# ----------------------------------------------------------------------------------------- SAM's vector maths
def vector_ops_time(model: torch.nn.Module, device: torch.device, rho: float, repeats: int = 7) -> dict[str, float]:
    """Median ms of SAM's per-step vector maths over all trainable parameters, as ksam_hf.sharpness
    does them (ascent_norm, gradient_to_epsilon_, in and out of weights_at_w_plus_e) and minimally
    (norm, w += a g, w -= a g): the part of the library's overhead over the bound they explain.
    The weights are put back afterwards."""
    from ksam_hf.sharpness import ascent_norm, gradient_to_epsilon_, weights_at_w_plus_e

    params = [p for p in model.parameters() if p.requires_grad]
    backup = [p.detach().clone() for p in params]

    def library() -> float:
        grads = [torch.randn_like(p) * 1e-3 for p in params]
        synchronize(device)
        start = time.perf_counter()
        norm = float(ascent_norm(grads, params, False))
        with weights_at_w_plus_e(params, gradient_to_epsilon_(grads, params, rho, norm, False)):
            pass
        synchronize(device)
        return time.perf_counter() - start

    @torch.no_grad()
    def minimal() -> float:
        grads = [torch.randn_like(p) * 1e-3 for p in params]
        synchronize(device)
        start = time.perf_counter()
        norm = float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads, 2))))
        scale = rho / (norm + 1e-12)
        torch._foreach_add_(params, grads, alpha=scale)
        torch._foreach_add_(params, grads, alpha=-scale)
        synchronize(device)
        return time.perf_counter() - start

    try:
        out = {}
        for name, fn in (("library_ms", library), ("minimal_ms", minimal)):
            fn()  # warm
            out[name] = 1e3 * median([fn() for _ in range(repeats)])
        return out
    finally:
        with torch.no_grad():
            torch._foreach_copy_(params, backup)
