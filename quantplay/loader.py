"""ModelCache: each (model, revision, preset, device map) is loaded once and shared.

* single-flight: concurrent requests for one key wait for a single load;
* LRU under a memory budget that counts each load's estimated peak (a
  quantizing load briefly holds the float checkpoint too);
* leases: a model in use is never evicted under a running generation;
* eviction frees memory for real: references dropped, garbage collected,
  CUDA cache emptied, the C heap trimmed.

It knows nothing about prompts or generation.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from . import diskcache, estimate, metrics
from .catalog import ModelSource, ModelUnavailable
from .compute import COMPUTE
from .presets import PresetError, QuantPreset, torch_dtype

log = logging.getLogger(__name__)
Progress = Callable[[float, str], None]
DEVICE_MAPS = ("auto", "cpu", "cuda:0")


class MemoryBudgetError(RuntimeError):
    """A load that cannot fit the memory budget, even after evicting idle models."""


def parse_budget(text: str | None, available: int) -> int:
    """'4GiB', '4000MB', '512M' or a fraction such as '0.6' of `available` bytes."""
    text = (text or "").strip()
    if not text:
        return int(0.6 * available)
    match = re.fullmatch(r"(?i)(\d+(?:\.\d+)?)\s*(b|kb|mb|gb|tb|kib|mib|gib|tib|k|m|g|t)?", text)
    if not match:
        raise ValueError(f"QUANTPLAY_MEMORY_BUDGET={text!r}: use a size like '4GiB' or '4000MB', or a fraction like '0.6'.")
    value, unit = float(match.group(1)), (match.group(2) or "").lower()
    if not unit:
        if value <= 1.0:
            return int(value * available)
        return int(value)
    scale = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
             "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40,
             "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}[unit]
    return int(value * scale)


def resolve_device(device_map: str) -> str:
    if device_map not in DEVICE_MAPS:
        raise PresetError(f"device_map={device_map!r}: use one of {', '.join(DEVICE_MAPS)}.")
    if device_map == "cuda:0" and not torch.cuda.is_available():
        raise PresetError("device_map='cuda:0' but no CUDA GPU is visible; use 'auto' or 'cpu'.")
    return "cuda:0" if device_map == "auto" and torch.cuda.is_available() else ("cpu" if device_map == "auto" else device_map)


def trust_remote_code() -> bool:
    """Server-side switch only; never taken from a request."""
    return os.environ.get("QUANTPLAY_TRUST_REMOTE_CODE", "").strip().lower() in ("1", "true", "yes")


@dataclass
class LoadedModel:
    source: ModelSource
    preset: QuantPreset
    device_map: str
    device: str
    model: Any
    tokenizer: Any
    footprint_bytes: int
    footprint_hf_bytes: int
    load_seconds: float
    warnings: list[str] = field(default_factory=list)
    loaded_from: str = "checkpoint"  # or "disk cache": prequantized weights, no quantizing
    users: int = 0
    generate_lock: threading.Lock = field(default_factory=threading.Lock)  # for free-threaded streams

    @property
    def key(self) -> tuple:
        return (self.source.key, self.preset, self.device_map)

    def describe(self) -> dict[str, Any]:
        return {"model": self.source.name, "preset": self.preset.name, "device": self.device,
                "footprint_bytes": self.footprint_bytes, "in_use": self.users > 0, "loaded_from": self.loaded_from}


def _load(source: ModelSource, preset: QuantPreset, device_map: str, device: str,
          progress: Progress) -> tuple[Any, Any, list[str], str]:
    """One real `from_pretrained` (from the disk cache of quantized weights when it has the
    variant), with errors a person can act on."""
    from transformers import AutoModelForCausalLM

    problems = preset.device_problems(device)
    if problems:
        raise PresetError(" ".join(problems))
    warnings = preset.device_notes(device)
    kwargs: dict[str, Any] = {
        "dtype": torch_dtype(preset.resolved_dtype(device)),
        "device_map": device if device_map == "auto" else device_map,
        "revision": source.revision,
        "trust_remote_code": trust_remote_code(),
    }
    key = diskcache.entry_key(source, preset, device) if preset.quantized and diskcache.enabled() else None
    cached = diskcache.lookup(key) if key else None
    if cached is not None:
        progress(0.1, f"loading prequantized {preset.name} of {source.name} from the disk cache…")
        tokenizer = tokenizer_for(source)
        model = AutoModelForCausalLM.from_pretrained(cached, dtype=kwargs["dtype"], device_map=kwargs["device_map"])
        model.eval()
        return model, tokenizer, warnings, "disk cache"
    if preset.quantized:
        kwargs["quantization_config"] = preset.to_bnb_config(device)
    progress(0.1, f"loading {preset.name} of {source.name}…")
    try:
        check_causal_lm(source)
        tokenizer = tokenizer_for(source)
        model = AutoModelForCausalLM.from_pretrained(source.path, **kwargs)
    except ValueError as exc:
        raise _as_unavailable(source, exc) from None
    except OSError as exc:
        raise _could_not_load(source, exc) from None
    except torch.OutOfMemoryError:
        raise MemoryBudgetError(f"Out of memory while loading {preset.name} of {source.name!r}.") from None
    model.eval()
    if key:
        progress(0.9, f"saving quantized {preset.name} to the disk cache…")
        diskcache.store(key, model, f"{source.name}/{preset.name}")
    return model, tokenizer, warnings, "checkpoint"


def check_causal_lm(source: ModelSource) -> None:
    """Refuse, before any weights are read, what AutoModelForCausalLM cannot load (or would need remote code for)."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    try:
        config = AutoConfig.from_pretrained(source.path, revision=source.revision, trust_remote_code=trust_remote_code())
    except ValueError as exc:
        raise _as_unavailable(source, exc) from None
    except OSError as exc:
        raise _could_not_load(source, exc) from None
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and not getattr(config, "auto_map", None):
        raise _not_causal(source)


def _could_not_load(source: ModelSource, exc: OSError) -> ModelUnavailable:
    return ModelUnavailable(f"Could not load {source.name!r}: {str(exc).splitlines()[0][:300]}")


def _not_causal(source: ModelSource) -> ModelUnavailable:
    return ModelUnavailable(f"{source.name!r} is not a causal language model (text generation); "
                            "quantplay compares models that AutoModelForCausalLM can load.")


def _as_unavailable(source: ModelSource, exc: ValueError) -> Exception:
    text = str(exc)
    if "trust_remote_code" in text:
        return ModelUnavailable(f"{source.name!r} needs custom code from its repository, which this server does "
                                "not run (QUANTPLAY_TRUST_REMOTE_CODE is off).")
    if "Unrecognized configuration class" in text or "AutoModelForCausalLM" in text:
        return _not_causal(source)
    return exc


_tokenizers: OrderedDict[tuple, Any] = OrderedDict()
_tokenizers_lock = threading.Lock()


def tokenizer_for(source: ModelSource):
    """One tokenizer per model source, shared by all its variants (they tokenize alike)."""
    from transformers import AutoTokenizer

    with _tokenizers_lock:
        if source.key in _tokenizers:
            _tokenizers.move_to_end(source.key)
            return _tokenizers[source.key]
    tokenizer = AutoTokenizer.from_pretrained(source.path, revision=source.revision,
                                              trust_remote_code=trust_remote_code())
    with _tokenizers_lock:
        _tokenizers[source.key] = tokenizer
        while len(_tokenizers) > 8:
            _tokenizers.popitem(last=False)
    return tokenizer


class ModelCache:
    """Loads once per key, shares the result, evicts least recently used under a budget."""

    def __init__(self, budget_bytes: int | None = None, load_fn=_load, wait_seconds: float = 300.0):
        if budget_bytes is None:
            available = metrics.device_memory(metrics.default_device())["device_available_bytes"]
            budget_bytes = parse_budget(os.environ.get("QUANTPLAY_MEMORY_BUDGET"), available)
        self.budget_bytes = budget_bytes
        self.wait_seconds = wait_seconds
        self._load_fn = load_fn
        self._entries: OrderedDict[tuple, LoadedModel] = OrderedDict()  # least recently used first
        self._inflight: dict[tuple, Future] = {}
        self._reserved = 0
        self._cond = threading.Condition()
        self._load_serial = threading.Lock()  # one load at a time: peaks never stack up
        self._admission = threading.Lock()  # one request at a time acquires its set of leases
        self._estimates: dict[tuple, tuple[int, int]] = {}
        self.loads = 0  # how many real loads ran (for tests and the bench)
        self.evictions: list[tuple] = []

    # -- budget ----------------------------------------------------------
    def footprint_estimate(self, source: ModelSource, preset: QuantPreset, device: str) -> tuple[int, int]:
        """(final bytes, peak bytes while loading): a load from the disk cache has no float checkpoint
        passing through memory, so its peak is its final size."""
        final, peak = self.estimate(source, preset, device)
        if preset.quantized and diskcache.enabled():
            disk_key = diskcache.entry_key(source, preset, device)
            if disk_key and diskcache.has(disk_key):
                return final, final
        return final, peak

    def estimate(self, source: ModelSource, preset: QuantPreset, device: str) -> tuple[int, int]:
        """(final bytes, peak bytes while quantizing on load) from the config alone."""
        key = (source.key, preset, device)
        if key not in self._estimates:
            from transformers import AutoConfig

            try:
                config = AutoConfig.from_pretrained(source.path, revision=source.revision,
                                                    trust_remote_code=trust_remote_code())
                counts = estimate.count_weights(config, preset.llm_int8_skip_modules)
                self._estimates[key] = (estimate.estimate_bytes(counts, preset, device),
                                        estimate.load_peak_bytes(counts, preset, config, device))
            except Exception as exc:  # the real load will report a better error
                log.debug("no estimate for %s: %s", source.name, exc)
                self._estimates[key] = (0, 0)
        return self._estimates[key]

    def resident_bytes(self) -> int:
        with self._cond:
            return sum(e.footprint_bytes for e in self._entries.values()) + self._reserved

    def _make_room(self, need: int, what: str) -> None:
        """Evict idle entries, least recently used first, until `need` fits. Holds _cond."""
        deadline = time.monotonic() + self.wait_seconds
        while True:
            used = sum(e.footprint_bytes for e in self._entries.values()) + self._reserved
            while used + need > self.budget_bytes:
                idle = next((k for k, e in self._entries.items() if e.users == 0), None)
                if idle is None:
                    break
                used -= self._evict_locked(idle)
            if used + need <= self.budget_bytes:
                return
            busy = sum(e.footprint_bytes for e in self._entries.values() if e.users > 0)
            if need > self.budget_bytes or time.monotonic() > deadline or busy == 0:
                raise MemoryBudgetError(
                    f"{what} needs about {need / 2**20:.0f} MiB while loading; the memory budget is "
                    f"{self.budget_bytes / 2**20:.0f} MiB and {used / 2**20:.0f} MiB of it is in use. "
                    "Pick fewer or smaller variants, or raise QUANTPLAY_MEMORY_BUDGET."
                )
            self._cond.wait(timeout=1.0)  # a running generation will release its lease

    def check_fits(self, items: list[tuple[ModelSource, QuantPreset, str]]) -> None:
        """Refuse up front a set of variants that cannot be resident together."""
        finals, peaks = [], []
        for source, preset, device in items:
            final, peak = self.footprint_estimate(source, preset, device)
            finals.append(final)
            peaks.append(peak - final)
        need = sum(finals) + max(peaks, default=0)
        if need > self.budget_bytes:
            raise MemoryBudgetError(
                f"These {len(items)} variants need about {need / 2**20:.0f} MiB together (estimated from the "
                f"config, including the peak while quantizing); the memory budget is "
                f"{self.budget_bytes / 2**20:.0f} MiB. Pick fewer variants, or raise QUANTPLAY_MEMORY_BUDGET."
            )

    # -- get / lease -----------------------------------------------------
    def get(self, source: ModelSource, preset: QuantPreset, device_map: str = "auto",
            progress: Progress | None = None) -> tuple[LoadedModel, bool]:
        """The loaded variant and whether it was a cache hit. Blocks while another thread loads it."""
        entry, hit = self._acquire(source, preset, device_map, progress, lease=False)
        return entry, hit

    @contextmanager
    def lease(self, source: ModelSource, preset: QuantPreset, device_map: str = "auto",
              progress: Progress | None = None) -> Iterator[tuple[LoadedModel, bool]]:
        """Like `get`, and the model is not evicted until the block ends."""
        entry, hit = self._acquire(source, preset, device_map, progress, lease=True)
        try:
            yield entry, hit
        finally:
            self.release(entry)

    def admission(self) -> threading.Lock:
        """Hold while leasing all the variants of one request (see compare._lease_all)."""
        return self._admission

    def release(self, entry: LoadedModel) -> None:
        with self._cond:
            entry.users -= 1
            self._cond.notify_all()

    def _acquire(self, source, preset, device_map, progress, lease):
        device = resolve_device(device_map)
        key = (source.key, preset, device_map)
        progress = progress or (lambda fraction, message: None)
        with self._cond:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                entry.users += lease
                return entry, True
            future = self._inflight.get(key)
            owner = future is None
            if owner:
                future = self._inflight[key] = Future()
        if not owner:
            progress(0.0, f"waiting for another request loading {preset.name}…")
            entry = future.result()
            with self._cond:
                entry.users += lease
            return entry, True
        try:
            entry = self._load_entry(key, source, preset, device_map, device, progress, lease)
        except BaseException as exc:
            with self._cond:
                del self._inflight[key]
            future.set_exception(exc)
            raise
        future.set_result(entry)
        return entry, False

    def _load_entry(self, key, source, preset, device_map, device, progress, lease: bool) -> LoadedModel:
        """Reserve the estimated peak, load, then swap the reservation for the entry in one step,
        so that no moment exists where a loaded model is counted nowhere."""
        final, peak = self.footprint_estimate(source, preset, device)
        with self._load_serial:
            with self._cond:
                self._make_room(peak, f"{preset.name} of {source.name}")
                self._reserved += peak
            start = time.perf_counter()
            try:
                # on the compute thread, like every torch operation (see compute.py)
                model, tokenizer, warnings, loaded_from = COMPUTE.call(self._load_fn, source, preset, device_map,
                                                                       device, progress)
                seconds = time.perf_counter() - start
                metrics.release_memory()  # the float checkpoint that passed through is garbage now
                entry = LoadedModel(source, preset, device_map, device, model, tokenizer,
                                    metrics.footprint_bytes(model), metrics.footprint_hf_bytes(model), seconds,
                                    warnings, loaded_from, users=int(lease))
            except BaseException:
                with self._cond:
                    self._reserved -= peak
                metrics.release_memory()
                raise
            with self._cond:
                self._reserved -= peak
                self._entries[key] = entry
                del self._inflight[key]
                self.loads += 1
                self._trim_locked()  # a real footprint a little above its estimate
                self._cond.notify_all()
        progress(1.0, f"loaded {preset.name} in {seconds:.1f} s")
        log.info("loaded %s/%s on %s in %.1f s", source.name, preset.name, device, seconds)
        return entry

    # -- eviction ----------------------------------------------------------
    def _trim_locked(self) -> None:
        """Evict idle entries, least recently used first, while the cache is over its budget."""
        while sum(e.footprint_bytes for e in self._entries.values()) + self._reserved > self.budget_bytes:
            idle = next((k for k, e in self._entries.items() if e.users == 0), None)
            if idle is None:
                return
            self._evict_locked(idle)

    def _evict_locked(self, key) -> int:
        entry = self._entries.pop(key)
        freed = entry.footprint_bytes
        self.evictions.append(key)
        log.info("evicting %s/%s (%.0f MiB)", entry.source.name, entry.preset.name, freed / 2**20)
        entry.model = entry.tokenizer = None
        del entry
        metrics.release_memory()
        return freed

    def unload(self, model_name: str | None = None, preset_name: str | None = None) -> int:
        """Evict idle entries matching the filters (all idle ones by default); returns how many."""
        with self._cond:
            keys = [k for k, e in self._entries.items() if e.users == 0
                    and model_name in (None, e.source.name) and preset_name in (None, e.preset.name)]
            for key in keys:
                self._evict_locked(key)
            return len(keys)

    def entries(self) -> list[dict[str, Any]]:
        with self._cond:
            return [e.describe() for e in self._entries.values()]


_default: ModelCache | None = None
_default_lock = threading.Lock()


def default_cache() -> ModelCache:
    global _default
    with _default_lock:
        if _default is None:
            _default = ModelCache()
        return _default
