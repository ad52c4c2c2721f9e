"""One variant read from disk by transformers, with errors a person can act on.

`load_variant` runs one `from_pretrained` (from the disk cache of prequantized
weights when it holds the variant); `check_causal_lm` refuses, before any
weights are read, what AutoModelForCausalLM cannot load. Whatever transformers
raises while reading a model (a bad config, missing files: ValueError, OSError,
KeyError) becomes a `ModelUnavailable` that names the model, in one place:
`reading(source)`. `estimate_variant` sizes a variant from its config, or from
its weight files (saying so) when that fails, and raises when it has nothing to
go on: the memory budget is never silently unchecked.

`Tokenizers` is an LRU of tokenizers, one per source. It sits below `loader`
(which owns the cache, the budget and one `Tokenizers`)
and knows nothing about caching, prompts or generation.
"""

from __future__ import annotations

import json
import logging
import struct
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from . import config as qconfig
from . import diskcache, estimator, hub
from .catalog import ModelSource, ModelUnavailable
from .config import Config
from .errors import MemoryBudgetError, QuantplayError
from .presets import PresetError, QuantPreset, torch_dtype

log = logging.getLogger(__name__)
Progress = Callable[[float, str], None]
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I8": 1, "U8": 1, "F8_E4M3": 1, "F8_E5M2": 1}
_FLOAT_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


def unavailable(source: ModelSource, exc: BaseException) -> ModelUnavailable:
    """What a person reads when transformers could not read `source` (never a token: see hub.redact)."""
    said = hub.explain(source.name, exc, source.revision)
    if said:
        return ModelUnavailable(said)
    text = hub.redact(str(exc))
    if "trust_remote_code" in text:
        return ModelUnavailable(f"{source.name!r} needs custom code from its repository, which this server does "
                                "not run (QUANTPLAY_TRUST_REMOTE_CODE is off).")
    if "Unrecognized configuration class" in text or "AutoModelForCausalLM" in text:
        return not_causal(source)
    first = text.splitlines()[0][:300] if text.strip() else type(exc).__name__
    return ModelUnavailable(f"Could not load {source.name!r}: {first}")


def not_causal(source: ModelSource) -> ModelUnavailable:
    return ModelUnavailable(f"{source.name!r} is not a causal language model (text generation); "
                            "quantplay compares models that AutoModelForCausalLM can load.")


def where(source: ModelSource) -> dict[str, Any]:
    """The from_pretrained arguments that say which files: the revision, and the local HF cache only
    for a Hub model resolved offline (so nothing waits on an unreachable Hub)."""
    return {"revision": source.revision, "local_files_only": source.local_only}


@contextmanager
def reading(source: ModelSource) -> Iterator[None]:
    """The one mapping of transformers' loading errors to `ModelUnavailable`; quantplay's own pass through."""
    try:
        yield
    except QuantplayError:
        raise
    except (ValueError, OSError, KeyError) as exc:  # EnvironmentError is OSError
        raise unavailable(source, exc) from None


def read_config(source: ModelSource, config: Config | None = None):
    from transformers import AutoConfig

    trust = (config or qconfig.current()).trust_remote_code
    with reading(source):
        return AutoConfig.from_pretrained(source.path, trust_remote_code=trust, **where(source))


def read_tokenizer(source: ModelSource, config: Config | None = None):
    from transformers import AutoTokenizer

    trust = (config or qconfig.current()).trust_remote_code
    with reading(source):
        return AutoTokenizer.from_pretrained(source.path, trust_remote_code=trust, **where(source))


class Tokenizers:
    """An LRU of tokenizers, one per model source (its variants tokenize alike); each
    `loader.ModelCache` owns one, so two caches never share a tokenizer."""

    def __init__(self, config: Config | None = None, kept: int = 8) -> None:
        self.config = config
        self.kept = kept
        self._items: OrderedDict[tuple, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, source: ModelSource):
        with self._lock:
            if source.key in self._items:
                self._items.move_to_end(source.key)
                return self._items[source.key]
        tokenizer = read_tokenizer(source, self.config)  # outside the lock: reading takes seconds
        with self._lock:
            self._items[source.key] = tokenizer
            while len(self._items) > self.kept:
                self._items.popitem(last=False)
        return tokenizer


def check_causal_lm(source: ModelSource, config: Config | None = None) -> None:
    """Refuse, before any weights are read, what AutoModelForCausalLM cannot load (or would need remote code for)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    model_config = read_config(source, config)
    if model_config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and not getattr(model_config, "auto_map", None):
        raise not_causal(source)


def load_variant(source: ModelSource, preset: QuantPreset, device_map: str, device: str, progress: Progress,
                 tokenizer: Callable[[ModelSource], Any], config: Config | None = None
                 ) -> tuple[Any, Any, list[str], str]:
    """(model, tokenizer, warnings, loaded_from): "disk cache" (prequantized weights) or "checkpoint"."""
    from transformers import AutoModelForCausalLM

    config = config or qconfig.current()
    problems = preset.device_problems(device)
    if problems:
        raise PresetError(" ".join(problems))
    warnings = preset.device_notes(device)
    kwargs: dict[str, Any] = {"dtype": torch_dtype(preset.resolved_dtype(device)),
                              "device_map": device if device_map == "auto" else device_map}
    key = diskcache.entry_key(source, preset, device) if preset.quantized and diskcache.enabled(config) else None
    cached = diskcache.lookup(key, config) if key else None
    try:
        with reading(source):
            if cached is not None:
                progress(0.1, f"loading prequantized {preset.name} of {source.name} from the disk cache…")
                tok = tokenizer(source)
                model = AutoModelForCausalLM.from_pretrained(cached, **kwargs)
                model.eval()
                return model, tok, warnings, "disk cache"
            progress(0.1, f"loading {preset.name} of {source.name}…")
            check_causal_lm(source, config)
            tok = tokenizer(source)
            if preset.quantized:
                kwargs["quantization_config"] = preset.to_bnb_config(device)
            model = AutoModelForCausalLM.from_pretrained(source.path, trust_remote_code=config.trust_remote_code,
                                                         **where(source), **kwargs)
    except torch.OutOfMemoryError:
        raise MemoryBudgetError(f"Out of memory while loading {preset.name} of {source.name!r}.") from None
    model.eval()
    if key:
        progress(0.9, f"saving quantized {preset.name} to the disk cache…")
        diskcache.store(key, model, f"{source.name}/{preset.name}", config)
    return model, tok, warnings, "checkpoint"


# -- sizes from the weight files, when the config cannot be read -------------------
def weight_files(source: ModelSource) -> list[Path]:
    """The checkpoint's *.safetensors (else *.bin) files: in its directory, or in the local HF cache."""
    folder = Path(source.path)
    if not folder.is_dir():
        from huggingface_hub import snapshot_download

        try:  # offline: only what is already cached
            folder = Path(snapshot_download(source.path, revision=source.revision, local_files_only=True))
        except Exception:  # not cached (or not a repo id): nothing to measure
            return []
    return sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))


def _stored_bytes(files: list[Path]) -> int:
    """Bytes per weight as stored: the commonest dtype in a safetensors header; 2 when unknown
    (which overestimates a float32 variant of a half-precision checkpoint rather than under)."""
    for path in files:
        if path.suffix != ".safetensors":
            continue
        try:
            with path.open("rb") as f:
                (length,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(length))
        except (OSError, ValueError, struct.error):
            continue
        sizes: dict[int, int] = {}
        for name, info in header.items():
            if name != "__metadata__" and info.get("dtype") in _DTYPE_BYTES:
                width = _DTYPE_BYTES[info["dtype"]]
                sizes[width] = sizes.get(width, 0) + 1
        if sizes:
            return max(sizes, key=sizes.get)
    return 2


def files_estimate(source: ModelSource, preset: QuantPreset, device: str) -> tuple[int, int] | None:
    """(final, peak) bytes from the weight files, erring high; None when no weight file is at hand.

    A float variant is the checkpoint rescaled to its dtype; a quantized one is counted at that
    float size (an upper bound), and its peak adds the float checkpoint passing through."""
    files = weight_files(source)
    if not files:
        return None
    total = sum(f.stat().st_size for f in files)
    scaled = total * _FLOAT_BYTES.get(preset.resolved_dtype(device), 4) // _stored_bytes(files)
    return (scaled, 2 * scaled) if preset.quantized else (scaled, scaled)


def estimate_variant(source: ModelSource, preset: QuantPreset, device: str,
                     config: Config | None = None) -> tuple[int, int, str | None]:
    """(final bytes, peak bytes while loading, note): from the config alone, or, when it cannot be
    read, from the weight files with a note saying so. Raises when neither is at hand."""
    try:
        model_config = read_config(source, config)
        counts = estimator.count_weights(model_config, preset.llm_int8_skip_modules)
        return (estimator.estimate_bytes(counts, preset, device),
                estimator.load_peak_bytes(counts, preset, model_config, device), None)
    except Exception as exc:  # an architecture the meta-model count cannot build, a broken config…
        reason = hub.redact(str(exc)).splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    sizes = files_estimate(source, preset, device)
    if sizes is None:
        raise QuantplayError(f"Cannot estimate the memory {preset.name} of {source.name!r} needs: the estimate "
                             f"from its config failed ({reason}) and no weight files are at hand.")
    note = (f"memory of {preset.name} estimated from the weight files on disk ({sizes[0] / 2**20:.0f} MiB, "
            f"erring high), because the estimate from its config failed: {reason}")
    log.warning("%s: %s", source.name, note)
    return sizes[0], sizes[1], note
