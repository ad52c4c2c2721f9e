"""Measurements: model footprint, KV cache size, process and device memory, environment.

Nothing here loads a model or knows about the UI. Every function reads and
returns numbers except one, `release_memory`, which acts: it collects garbage,
empties the CUDA cache and trims the C heap (`malloc_trim`), so that what an
evicted model or a finished load held goes back to the system.
"""

from __future__ import annotations

import ctypes
import functools
import gc
import os
import platform
import resource
import sys
from typing import Any

import torch

from . import allocator, resources

_INTERESTING_FLAGS = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16",
                      "avx512_fp16", "amx_bf16", "amx_int8", "amx_tile", "neon", "asimd", "sve")


def _tensors_of(param: torch.Tensor):
    """The tensor and every tensor bitsandbytes hangs off it (int8 scales, 4-bit quant state)."""
    yield param
    for attr in ("SCB", "CB"):
        extra = getattr(param, attr, None)
        if isinstance(extra, torch.Tensor):
            yield extra
    state = getattr(param, "quant_state", None)
    while state is not None:
        for attr in ("absmax", "code", "offset"):
            extra = getattr(state, attr, None)
            if isinstance(extra, torch.Tensor):
                yield extra
        state = getattr(state, "state2", None)


def footprint_bytes(model: torch.nn.Module) -> int:
    """Bytes of every tensor held for the weights, bitsandbytes' quant state included.

    `PreTrainedModel.get_memory_footprint()` counts parameters and buffers only,
    which misses the absmax/nested-absmax/quant-map tensors of 4-bit layers and
    the row scales of int8 layers. Shared storage (tied embeddings) counts once.
    """
    seen: set[tuple[int, int]] = set()
    total = 0
    for tensor in (*model.parameters(), *model.buffers()):
        for t in _tensors_of(tensor):
            if t.device.type == "meta":
                continue
            storage = t.untyped_storage()
            key = (storage.data_ptr(), storage.nbytes())
            if key[0] == 0 or key in seen:
                continue
            seen.add(key)
            total += storage.nbytes()
    return total


def footprint_hf_bytes(model: torch.nn.Module) -> int:
    fn = getattr(model, "get_memory_footprint", None)
    return int(fn()) if fn else sum(p.numel() * p.element_size() for p in model.parameters())


def kv_cache_bytes(cache: Any) -> int:
    """Size of a KV cache (a transformers Cache object or the legacy nested tuples)."""
    if cache is None:
        return 0
    seen: set[int] = set()

    def walk(obj: Any) -> int:
        if isinstance(obj, torch.Tensor):
            if id(obj) in seen or obj.device.type == "meta":
                return 0
            seen.add(id(obj))
            return obj.numel() * obj.element_size()
        if isinstance(obj, (list, tuple)):
            return sum(walk(o) for o in obj)
        layers = getattr(obj, "layers", None)
        if layers is not None:
            return sum(walk(getattr(layer, "keys", None)) + walk(getattr(layer, "values", None)) for layer in layers)
        return 0

    return walk(cache)


# -- process and device memory ----------------------------------------------
def process_rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def process_rss_peak_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def device_memory(device: str) -> dict[str, int | None]:
    """Total and available bytes of the memory a model lives in on `device`."""
    if device.startswith("cuda") and torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info(torch.device(device))
        return {"device_total_bytes": int(total), "device_available_bytes": int(free)}
    import psutil

    vm = psutil.virtual_memory()
    return {"device_total_bytes": int(vm.total), "device_available_bytes": int(vm.available)}


def memory_snapshot(device: str) -> dict[str, int | None]:
    """The process's RSS (and its peak), VRAM allocated on CUDA, and the device's total and free memory.
    (The device-wide VRAM peak is not here: `VramTurns` resets it every turn; peaks are per variant.)"""
    cuda = device.startswith("cuda") and torch.cuda.is_available()
    return {
        "process_rss_bytes": process_rss_bytes(),
        "process_rss_peak_bytes": process_rss_peak_bytes(),
        "cuda_allocated_bytes": int(torch.cuda.memory_allocated()) if cuda else None,
        **device_memory(device),
    }


class VramTurns:
    """The most VRAM one generation holds at once beyond what was allocated when it started: its KV
    cache, activations and logits (`own_peak_bytes`; its weights are its footprint).

    Why turns: torch's peak counter is per device, and N variants generate on one
    device. On the "interleave" schedule their turns never overlap (one thread, one
    greenlet at a time; loads and scoring run between turns), so the counter is
    reset at the start of each of this generation's turns and read at its end:
    the turn's own peak is the counter's peak less what was allocated at the turn's
    start, and what the turn kept (allocated at its end less at its start: the KV
    cache growing) is this generation's alone. Its peak is the largest of
    (what its earlier turns kept + this turn's own peak). Exact there, it is not
    measured on the "threads" schedule, where turns overlap (None: not attributable).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.kept = 0  # bytes this generation's finished turns left allocated
        self.own_peak_bytes = 0
        self._start: int | None = None

    def begin(self) -> None:
        torch.cuda.reset_peak_memory_stats(self.device)
        self._start = torch.cuda.memory_allocated(self.device)

    def end(self) -> None:
        if self._start is None:
            return
        peak, now = torch.cuda.max_memory_allocated(self.device), torch.cuda.memory_allocated(self.device)
        self.own_peak_bytes = max(self.own_peak_bytes, self.kept + peak - self._start)
        self.kept += now - self._start
        self._start = None


def release_memory() -> None:
    """Give freed memory back: collect garbage, empty the CUDA cache, trim the C heap."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass


# -- environment -------------------------------------------------------------
def default_device() -> str:
    return "cuda:0" if torch.cuda.is_available() else "cpu"


@functools.lru_cache(maxsize=1)
def cpu_flags() -> tuple[str, ...]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    have = set(line.split(":", 1)[1].split())
                    return tuple(flag for flag in _INTERESTING_FLAGS if flag in have)
    except OSError:
        pass
    return ()


def _version(name: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(device: str | None = None) -> dict[str, Any]:
    """Versions, CPU, allocator, and the limits in force with their sources (`resources.describe`):
    `cpu_count` is the CPUs this process may use (quota, affinity), `host_cpu_count` the machine's."""
    return {"device": device or default_device(), **_static_environment(), **resources.describe(),
            "threads": torch.get_num_threads()}


@functools.lru_cache(maxsize=1)
def _static_environment() -> dict[str, Any]:
    return {
        "torch": torch.__version__,
        "transformers": _version("transformers"),
        "bitsandbytes": _version("bitsandbytes"),
        "host_cpu_count": os.cpu_count(),
        "cpu_flags": list(cpu_flags()),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "malloc": allocator.active(),  # jemalloc/tcmalloc when app.py found one (see allocator.py)
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
