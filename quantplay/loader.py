"""ModelCache: each (model, revision, preset, device) is loaded once and shared.

The device is the one `device_map` resolves to ("auto" is "cuda:0" on a CUDA
machine, else "cpu"): the loader loads onto it either way, so a preloaded
"auto" entry and a request placed on "cuda:0" share one copy.

* single-flight: concurrent requests for one key wait for a single load;
* LRU under a memory budget per pool, RAM (the config's `memory_budget`) and, on
  a CUDA machine, VRAM (`vram_budget`): an entry counts against the pool of the
  device it lives on (placement.py puts the fp32 reference in RAM when it does not
  fit in VRAM), and each load counts its estimated peak (a quantizing load
  briefly holds the float checkpoint too); when a config cannot be read, the
  estimate comes from the weight files and says so, and with nothing to measure
  the load is refused, never unchecked;
* leases: whoever runs a model holds a lease (`lease()`), and a leased model is
  never evicted; `get()` leases only while loading, so what it warms stays evictable;
* eviction frees memory for real: references dropped, garbage collected, CUDA
  cache emptied, the C heap trimmed, the slow part outside the cache's lock;
* one tokenizer per model source, shared by its variants (an LRU per cache).

It knows nothing about prompts or generation. Next to each model it keeps one
lock, `generate_lock`, that a threaded generation schedule takes so two
threads never run one model at once; the cache itself never takes it.
Reading a model from disk (transformers, the disk cache, loading errors) is
`pretrained`'s job.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any

from . import config as qconfig
from . import diskcache, metrics, placement, pretrained, resources, weights
from .catalog import ModelSource
from .compute import COMPUTE
from .config import Config
from .errors import MemoryBudgetError
from .loaded import LoadedModel, resolve_device
from .presets import QuantPreset

log = logging.getLogger(__name__)
Progress = Callable[[float, str], None]


class ModelCache:
    """Loads once per key, shares the result, evicts least recently used under a budget.

    Budgets, one per memory pool (`placement.pool`: "cpu" for RAM, "cuda" for VRAM on a CUDA
    machine), are read once, before any model: RAM is the config's memory budget against what
    this process may use (`resources.process_memory_budget`: a container's limit, not the host's
    RAM), VRAM the config's VRAM budget of the free VRAM. `budget` is the default device's, with
    how it was reached. `budget_bytes` replaces the default device's budget, `budgets` any pool's
    (tests give {"cpu": …, "cuda": …}). `load_fn(source, preset, device_map, device, progress)`
    defaults to a real `from_pretrained` (tests pass a fake)."""

    def __init__(self, budget_bytes: int | None = None, load_fn: Callable | None = None,
                 wait_seconds: float = 300.0, config: Config | None = None, *,
                 budgets: dict[str, int] | None = None):
        self.config = config or qconfig.current()
        default = placement.pool(metrics.default_device())
        given = dict(budgets or {})
        if budget_bytes is not None:
            given[default] = budget_bytes
        pools = {"cpu", default, *given}
        self.budgets = {pool: resources.Budget.given(given[pool], "given to ModelCache") if pool in given
                        else self._read_budget(pool) for pool in sorted(pools)}
        self.budget = self.budgets[default]
        self.wait_seconds = wait_seconds
        self._load_fn = load_fn or self._load_pretrained
        self._entries: OrderedDict[tuple, LoadedModel] = OrderedDict()  # least recently used first
        self._inflight: dict[tuple, Future] = {}
        self._reserved = dict.fromkeys(self.budgets, 0)  # per pool: the estimated peak of the load running now
        self._freeing = dict.fromkeys(self.budgets, 0)  # per pool: evicted, not yet given back (counted until it is)
        self._cond = threading.Condition()
        self._load_serial = threading.Lock()  # one load at a time: peaks never stack up
        self._admission = threading.Lock()  # one request at a time acquires its set of leases
        self._estimates: dict[tuple, tuple[int, int]] = {}
        self._estimate_notes: dict[tuple, str] = {}
        self._tokenizers = pretrained.Tokenizers(self.config)
        self.loads = 0  # how many real loads ran (for tests and the bench)
        self.evictions: deque[tuple] = deque(maxlen=100)  # the latest evicted keys, oldest first

    def _read_budget(self, pool: str) -> resources.Budget:
        if pool == "cuda":
            return resources.process_memory_budget(self.config.vram_budget, placement.GPU)
        return resources.process_memory_budget(self.config.memory_budget, "cpu")

    @property
    def budget_bytes(self) -> int:
        """The default device's budget (VRAM on a CUDA machine, else RAM)."""
        return self.budget.bytes

    def _budget_for(self, device: str) -> resources.Budget:
        pool = placement.pool(device)
        if pool not in self.budgets:
            raise MemoryBudgetError(f"No memory budget for {device}: no CUDA GPU was visible when the cache started.")
        return self.budgets[pool]

    # -- loading -----------------------------------------------------------
    def _load_pretrained(self, source: ModelSource, preset: QuantPreset, device_map: str, device: str,
                         progress: Progress) -> tuple[Any, Any, list[str], str]:
        return pretrained.load_variant(source, preset, device_map, device, progress, self.tokenizer_for, self.config)

    def tokenizer_for(self, source: ModelSource):
        """One tokenizer per model source, shared by all its variants (they tokenize alike)."""
        return self._tokenizers.get(source)

    # -- budget ----------------------------------------------------------
    def footprint_estimate(self, source: ModelSource, preset: QuantPreset, device: str) -> tuple[int, int]:
        """(final bytes, peak bytes while loading): a load from the disk cache has no float checkpoint
        passing through memory, so its peak is its final size."""
        final, peak = self.estimate(source, preset, device)
        if preset.quantized and diskcache.enabled(self.config):
            disk_key = diskcache.entry_key(source, preset, device)
            if disk_key and diskcache.has(disk_key, self.config):
                return final, final
        return final, peak

    def estimate(self, source: ModelSource, preset: QuantPreset, device: str) -> tuple[int, int]:
        """(final bytes, peak bytes while quantizing on load) from the config alone; from the weight
        files when the config cannot be read (then `estimate_note` says so). Raises a QuantplayError
        when neither is at hand: the budget check is never skipped."""
        key = (source.key, preset, device)
        if key not in self._estimates:
            final, peak, note = pretrained.estimate_variant(source, preset, device, self.config)
            self._estimates[key] = (final, peak)
            if note:
                self._estimate_notes[key] = note
        return self._estimates[key]

    def estimate_note(self, source: ModelSource, preset: QuantPreset, device: str) -> str | None:
        """Why an estimate came from the weight files, for the caller to show; None when it did not."""
        return self._estimate_notes.get((source.key, preset, device))

    def _used_locked(self, pool: str) -> int:
        return (sum(e.footprint_bytes for e in self._entries.values() if placement.pool(e.device) == pool)
                + self._reserved[pool] + self._freeing[pool])

    def resident_bytes(self, pool: str | None = None) -> int:
        """Bytes counted against `pool`'s budget (default: the default device's pool)."""
        with self._cond:
            return self._used_locked(pool or placement.pool(metrics.default_device()))

    def _reserve(self, need: int, what: str, device: str) -> None:
        """Make room for `need` bytes in `device`'s pool (evicting idle entries there), then count them as
        reserved. Waits for running generations to release their leases, up to `wait_seconds`."""
        budget = self._budget_for(device)
        pool = placement.pool(device)
        deadline = time.monotonic() + self.wait_seconds
        while True:
            with self._cond:
                evicted = self._evict_idle_locked(pool, need)
                if not evicted:
                    used = self._used_locked(pool)
                    if used + need <= budget.bytes:
                        self._reserved[pool] += need
                        return
                    busy = sum(e.footprint_bytes for e in self._entries.values()
                               if e.users > 0 and placement.pool(e.device) == pool)
                    if need > budget.bytes or time.monotonic() > deadline or busy + self._freeing[pool] == 0:
                        raise MemoryBudgetError(
                            f"{what} needs about {need / 2**20:.0f} MiB while loading; the {_kind(pool)} budget is "
                            f"{budget.summary()} and {used / 2**20:.0f} MiB of it is in use. "
                            f"Pick fewer or smaller variants, or {self._more_memory(pool)}.")
                    self._cond.wait(timeout=1.0)  # a running generation will release its lease
            self._free(evicted)

    def check_fits(self, items: list[tuple[ModelSource, QuantPreset, str]]) -> None:
        """Refuse up front a set of variants that cannot be resident together (each pool on its own)."""
        by_pool: dict[str, tuple[str, list[int], list[int]]] = {}  # pool -> (a device in it, finals, peaks)
        for source, preset, device in items:
            final, peak = self.footprint_estimate(source, preset, device)
            _, finals, peaks = by_pool.setdefault(placement.pool(device), (device, [], []))
            finals.append(final)
            peaks.append(peak - final)
        for pool, (device, finals, peaks) in by_pool.items():
            budget = self._budget_for(device)
            need = sum(finals) + max(peaks, default=0)
            if need > budget.bytes:
                raise MemoryBudgetError(
                    f"These {len(finals)} variants need about {need / 2**20:.0f} MiB together (estimated from the "
                    f"config, including the peak while quantizing); the {_kind(pool)} budget is {budget.summary()}. "
                    f"Pick fewer variants, or {self._more_memory(pool)}.")

    def _more_memory(self, pool: str) -> str:
        """What would raise the budget: under a container limit the setting alone cannot."""
        if pool == "cuda":
            return "raise QUANTPLAY_VRAM_BUDGET"
        if self.budgets[pool].limit_bytes is not None:
            return "run with a larger memory limit (QUANTPLAY_MEMORY_BUDGET is capped to what the limit leaves)"
        return "raise QUANTPLAY_MEMORY_BUDGET"

    # -- get / lease -----------------------------------------------------
    def get(self, source: ModelSource, preset: QuantPreset, device_map: str = "auto",
            progress: Progress | None = None) -> tuple[LoadedModel, bool]:
        """Load (or find) the variant and return it with whether it was a cache hit, holding no lease:
        for warming the cache (preload) and for checks. The entry may be evicted as soon as this
        returns (its `model` is then None), so whoever runs the model uses `lease` instead."""
        with self.lease(source, preset, device_map, progress) as (entry, hit):
            return entry, hit

    @contextmanager
    def lease(self, source: ModelSource, preset: QuantPreset, device_map: str = "auto",
              progress: Progress | None = None) -> Iterator[tuple[LoadedModel, bool]]:
        """The loaded variant and whether it was a cache hit; it is not evicted until the block ends.
        Blocks while another thread loads it."""
        entry, hit = self._acquire(source, preset, device_map, progress)
        try:
            yield entry, hit
        finally:
            self.release(entry)

    def admission(self) -> threading.Lock:
        """Hold while leasing all the variants of one request (see comparison.lease_all)."""
        return self._admission

    def release(self, entry: LoadedModel) -> None:
        with self._cond:
            entry.users -= 1
            self._cond.notify_all()

    def _acquire(self, source, preset, device_map, progress) -> tuple[LoadedModel, bool]:
        """The entry with one more user (a lease), loading it once if no one has."""
        device = resolve_device(device_map)
        key = (source.key, preset, device)  # not device_map: "auto" and the device it resolves to are one load
        progress = progress or (lambda fraction, message: None)
        with self._cond:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                entry.users += 1
                return entry, True
            future = self._inflight.get(key)
            owner = future is None
            if owner:
                future = self._inflight[key] = Future()
        if not owner:
            progress(0.0, f"waiting for another request loading {preset.name}…")
            entry = future.result()
            with self._cond:
                entry.users += 1
            return entry, True
        try:
            entry = self._load_entry(key, source, preset, device_map, device, progress)
        except BaseException as exc:
            with self._cond:
                del self._inflight[key]
            future.set_exception(exc)
            raise
        future.set_result(entry)
        return entry, False

    def _load_entry(self, key, source, preset, device_map, device, progress) -> LoadedModel:
        """Reserve the estimated peak, load, then swap the reservation for the (leased) entry in one
        step, so that no moment exists where a loaded model is counted nowhere."""
        final, peak = self.footprint_estimate(source, preset, device)
        with self._load_serial:
            self._reserve(peak, f"{preset.name} of {source.name}", device)
            start = time.perf_counter()
            try:
                # on the compute thread, like every torch operation (see compute.py)
                model, tokenizer, warnings, loaded_from = COMPUTE.call(self._load_fn, source, preset, device_map,
                                                                       device, progress)
                seconds = time.perf_counter() - start
                # now, before the first forward pass repacks 4-bit weights (see weights.py)
                report = COMPUTE.call(weights.for_load, source, preset, device, model, loaded_from, self.config)
                metrics.release_memory()  # the float checkpoint that passed through is garbage now
                note = self.estimate_note(source, preset, device)
                entry = LoadedModel(source, preset, device_map, device, model, tokenizer,
                                    metrics.footprint_bytes(model), metrics.footprint_hf_bytes(model), seconds,
                                    list(warnings) + ([note] if note else []), loaded_from, users=1, layer_errors=report)
            except BaseException:
                with self._cond:
                    self._reserved[placement.pool(device)] -= peak
                metrics.release_memory()
                raise
            with self._cond:
                self._reserved[placement.pool(device)] -= peak
                self._entries[key] = entry
                del self._inflight[key]
                self.loads += 1
                evicted = self._evict_idle_locked(placement.pool(device))  # a footprint a little above its estimate
                self._cond.notify_all()
            self._free(evicted)
        progress(1.0, f"loaded {preset.name} in {seconds:.1f} s")
        log.info("loaded %s/%s on %s in %.1f s", source.name, preset.name, device, seconds)
        return entry

    # -- eviction ----------------------------------------------------------
    def _evict_idle_locked(self, pool: str, need: int = 0) -> list[LoadedModel]:
        """The one eviction routine: take idle entries of `pool` out, least recently used first, until
        `need` more bytes fit its budget. Holds _cond; their bytes stay counted (`_freeing`) until the
        caller, outside the lock, gives the memory back with `_free`."""
        evicted: list[LoadedModel] = []
        leaving = 0
        while self._used_locked(pool) - leaving + need > self.budgets[pool].bytes:
            idle = next((k for k, e in self._entries.items() if e.users == 0 and placement.pool(e.device) == pool),
                        None)
            if idle is None:
                break
            evicted.append(self._take_locked(idle))
            leaving += evicted[-1].footprint_bytes
        return evicted

    def _take_locked(self, key) -> LoadedModel:
        entry = self._entries.pop(key)
        self._freeing[placement.pool(entry.device)] += entry.footprint_bytes
        self.evictions.append(key)
        log.info("evicting %s/%s (%.0f MiB)", entry.source.name, entry.preset.name, entry.footprint_bytes / 2**20)
        return entry

    def _free(self, evicted: list[LoadedModel]) -> None:
        """Give evicted entries' memory back: drop the weights, then the slow part (gc, CUDA cache,
        malloc_trim) without holding the cache's lock, so cache hits and releases go on meanwhile."""
        if not evicted:
            return
        freed = dict.fromkeys(self._freeing, 0)
        for entry in evicted:
            freed[placement.pool(entry.device)] += entry.footprint_bytes
            entry.model = entry.tokenizer = None
        evicted.clear()
        metrics.release_memory()
        with self._cond:
            for pool, n in freed.items():
                self._freeing[pool] -= n
            self._cond.notify_all()

    def unload(self, model_name: str | None = None, preset_name: str | None = None) -> int:
        """Evict idle entries matching the filters (all idle ones by default); returns how many."""
        with self._cond:
            keys = [k for k, e in self._entries.items() if e.users == 0
                    and model_name in (None, e.source.name) and preset_name in (None, e.preset.name)]
            evicted = [self._take_locked(key) for key in keys]
        self._free(evicted)
        return len(keys)

    def entries(self) -> list[dict[str, Any]]:
        with self._cond:
            return [e.describe() for e in self._entries.values()]


def _kind(pool: str) -> str:
    return "VRAM" if pool == "cuda" else "memory"


_default: ModelCache | None = None
_default_lock = threading.Lock()


def default_cache() -> ModelCache:
    """The process's cache, on the process's config (built on first use)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = ModelCache()
        return _default
