"""The benchmarks' timing and memory probes, in one place.

Timing: every comparison runs its candidates interleaved, one call each per round after a warm-up
([`interleaved_times`]), so that a machine busy with other work slows all of them alike and the ratios stay fair.
A run is a callable that returns its own seconds: [`timed_run`] makes one of any call (the GPU's work included
on CUDA), [`wall_and_cpu_run`] one that returns the wall-clock and the process's CPU seconds; [`seconds_of`] times
a single call.

Operations: [`OperationLog`] records every aten operation a forward runs, with its dtypes, memory layouts and CPU
time (where a fast path leaves bf16 or channels-last).

Memory: [`peak_memory`] counts the live tensor memory of a run (a `TorchDispatchMode`, [`LiveTensorMemory`]) plus the
parameters, buffers and optimizer states it holds; [`tracemalloc_peak_mib`] the memory numpy and Python allocate.
"""

from __future__ import annotations

import collections
import contextlib
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


def check_threads(parser, threads: int | None) -> None:
    """Refuses a `--threads` below 1 in one line, exit status 2 (torch would fail on it later, with a traceback)."""
    if threads is not None and threads < 1:
        parser.exit(2, f"{parser.prog}: error: --threads {threads}: must be >= 1\n")


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


def wall_and_cpu_run(call: Callable[[], object]) -> Callable[[], tuple[float, float]]:
    """A run for [`interleaved_times`] on CPU: one call of `call()`, returning (wall-clock seconds, CPU seconds).

    The CPU seconds are the process's (every thread's work): on a machine shared with other work, the time others
    take slows the wall clock and leaves them nearly unchanged, so ratios of CPU seconds scatter less.
    """

    def run() -> tuple[float, float]:
        start, cpu_start = time.perf_counter(), time.process_time()
        call()
        return time.perf_counter() - start, time.process_time() - cpu_start

    return run


def seconds_of(call: Callable, *args) -> float:
    """The seconds of one call `call(*args)`."""
    start = time.perf_counter()
    call(*args)
    return time.perf_counter() - start


def interleaved_times(
    runs: dict[str, Callable[[], float]], warmup: int, repeats: int, desc: str
) -> dict[str, list[float]]:
    """Calls every run `warmup` times, then `repeats` rounds of one call each; each call returns its own seconds
    (or its figures, as [`wall_and_cpu_run`])."""
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
# Operations


def memory_layout(tensor: torch.Tensor) -> str:
    """ "channels-last", "contiguous", "both" (a 4-d tensor with 1 x 1 maps or one channel is both) or "strided"."""
    contiguous = tensor.is_contiguous()
    if tensor.dim() == 4 and tensor.is_contiguous(memory_format=torch.channels_last):
        return "both" if contiguous else "channels-last"
    return "contiguous" if contiguous else "strided"


def tensor_signature(tensor: torch.Tensor) -> str:
    """A tensor's dtype, memory layout and shape, e.g. `bfloat16 channels-last 8x512x14x14`."""
    return f"{str(tensor.dtype).removeprefix('torch.')} {memory_layout(tensor)} {'x'.join(map(str, tensor.shape))}"


class OperationLog(TorchDispatchMode):
    """Every aten operation run while active, by operation and its tensors' dtypes, layouts and shapes, with its
    process CPU time.

    The operations are those after autocast (an autocast cast is a `to` of its own, the operation then sees bf16);
    composite operations (`conv2d`, `linear`, `matmul`) are logged as called, with what they run inside. Each
    [`forward`] is one sample; [`table`] gives every operation's median per forward and its share.
    """

    def __init__(self):
        super().__init__()
        self.forwards: list[collections.Counter] = []
        self.calls: collections.Counter = collections.Counter()

    @contextlib.contextmanager
    def forward(self):
        """Logs the operations run inside as one forward."""
        self.forwards.append(collections.Counter())
        with self:
            yield

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        start = time.process_time()
        outputs = func(*args, **(kwargs or {}))
        seconds = time.process_time() - start
        inputs = [tensor_signature(arg) for arg in torch.utils._pytree.tree_leaves(args) if torch.is_tensor(arg)]
        output = tensor_signature(outputs) if torch.is_tensor(outputs) else "-"
        key = (str(func), "; ".join(inputs), output, func.is_view)
        self.forwards[-1][key] += seconds
        self.calls[key] += 1
        return outputs

    def table(self) -> list[dict]:
        """One row per operation and signature, the slowest first: whether it may return a view of its input (its
        schema aliases it: views, and `to`), calls and median CPU milliseconds per forward, share of the forward's
        CPU time."""
        count = len(self.forwards)
        medians = {key: statistics.median(forward[key] for forward in self.forwards) for key in self.calls}
        total = sum(medians.values()) or 1.0
        return [
            {
                "operation": key[0],
                "inputs": key[1],
                "output": key[2],
                "view": key[3],
                "calls_per_forward": self.calls[key] / count,
                "cpu_ms": 1000 * seconds,
                "share": seconds / total,
            }
            for key, seconds in sorted(medians.items(), key=lambda item: -item[1])
        ]


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
