"""The benchmarks' timing and memory probes, in one place.

Timing: every comparison runs its candidates interleaved, one call each per round after a warm-up
([`interleaved_times`]), so that a machine busy with other work slows all of them alike and the ratios stay fair.
A run is a callable that returns its own seconds: [`timed_run`] makes one of any call (the GPU's work included
on CUDA); [`seconds_of`] times a single call.

Memory: [`peak_memory`] counts the live tensor memory of a run (a `TorchDispatchMode`, [`LiveTensorMemory`]) plus the
parameters, buffers and optimizer states it holds; [`tracemalloc_peak_mib`] the memory numpy and Python allocate.
"""

from __future__ import annotations

import gc
import statistics
import time
import tracemalloc
import weakref
from collections.abc import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.weak import WeakIdKeyDictionary
from tqdm.auto import tqdm

MIB = 2**20


# ---------------------------------------------------------------------------------------------------------------
# Timing


def synchronize(device: torch.device | None) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_run(call: Callable[[], object], device: torch.device | None = None) -> Callable[[], float]:
    """A run for [`interleaved_times`]: one call of `call()`, returning its seconds (the GPU's work included)."""

    def run() -> float:
        synchronize(device)
        start = time.perf_counter()
        call()
        synchronize(device)
        return time.perf_counter() - start

    return run


def seconds_of(call: Callable, *args) -> float:
    """The seconds of one call `call(*args)`."""
    start = time.perf_counter()
    call(*args)
    return time.perf_counter() - start


def interleaved_times(
    runs: dict[str, Callable[[], float]], warmup: int, repeats: int, desc: str
) -> dict[str, list[float]]:
    """Calls every run `warmup` times, then `repeats` rounds of one call each; each call returns its own seconds."""
    for _ in range(warmup):
        for run in runs.values():
            run()
    times = {name: [] for name in runs}
    for _ in tqdm(range(repeats), desc=desc, leave=False):
        for name, run in runs.items():
            times[name].append(run())
    return times


def interleaved_results(calls: dict[str, Callable[[], object]], repeats: int) -> dict[str, dict]:
    """Each call run `repeats` times, interleaved round by round; its median seconds, every time, and its last
    result (for the benchmarks that also compare what the candidates compute)."""
    results = {}

    def keeping(name, call):
        return timed_run(lambda: results.__setitem__(name, call()))

    times = interleaved_times({name: keeping(name, call) for name, call in calls.items()}, 0, repeats, "rounds")
    return {
        name: {"seconds": statistics.median(values), "times": values, "result": results[name]}
        for name, values in times.items()
    }


# ---------------------------------------------------------------------------------------------------------------
# Memory


class LiveTensorMemory(TorchDispatchMode):
    """Counts the bytes of the tensor storages that operations create while active, and their peak.

    A storage is counted from the operation that creates it until it is freed (a weak-reference finaliser), once
    however many views share it. oneDNN's and the allocator's own scratch memory are not tensors: not counted.
    """

    def __init__(self):
        super().__init__()
        self.seen = WeakIdKeyDictionary()
        self.current = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        outputs = func(*args, **(kwargs or {}))
        for tensor in torch.utils._pytree.tree_leaves(outputs):
            if isinstance(tensor, torch.Tensor) and tensor.device.type != "meta":
                storage = tensor.untyped_storage()
                if storage not in self.seen:
                    self.seen[storage] = True
                    self.current += storage.nbytes()
                    self.peak = max(self.peak, self.current)
                    weakref.finalize(storage, self.free, storage.nbytes())
        return outputs

    def free(self, nbytes: int) -> None:
        self.current -= nbytes


def tensor_bytes(*tracked) -> int:
    """Bytes of the modules' parameters and buffers and of the optimizers' states."""
    tensors = []
    for item in tracked:
        if isinstance(item, torch.nn.Module):
            tensors += [*item.parameters(), *item.buffers()]
        else:
            tensors += [value for state in item.state.values() for value in state.values() if torch.is_tensor(value)]
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors)


def peak_memory(run: Callable[[], object], *tracked) -> dict[str, float]:
    """Peak tensor memory (MiB) during `run()`: in total, and of what `run()` allocates (activations, gradients).

    The total adds the parameters, buffers and optimizer states of `tracked` (modules and optimizers), with their
    gradients freed first (every timed step starts with `zero_grad(set_to_none=True)`).
    """
    for item in tracked:
        item.zero_grad(set_to_none=True)
    gc.collect()
    resident = tensor_bytes(*tracked)
    with LiveTensorMemory() as memory:
        run()
    return {"peak_memory_mib": (resident + memory.peak) / MIB, "peak_allocated_mib": memory.peak / MIB}


def tracemalloc_peak_mib(call: Callable[[], object]) -> float:
    """Peak of the memory numpy and Python allocate during one call (tracemalloc), in MiB."""
    tracemalloc.start()
    call()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / MIB
