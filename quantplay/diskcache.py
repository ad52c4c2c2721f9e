"""On-disk cache of quantized weights: a new process loads int8/nf4 without re-quantizing.

An entry is a `save_pretrained` directory of the bitsandbytes-quantized model
(transformers serializes 8-bit and 4-bit weights with their quant state). Its
key covers what could make stale weights: the source (bundled file digest, local
weight files' size and mtime, or a Hub commit), the preset, the device, and the
torch, transformers and bitsandbytes versions. Entries are written into a
temporary directory and renamed into place, carry a manifest with each file's
SHA-256, and are verified before use: a corrupt entry is deleted and rebuilt.
The total size is kept under `QUANTPLAY_DISK_CACHE_LIMIT` (the config's
`disk_cache_limit`: a size or a fraction of free disk; None, from '0'/'off', turns
the cache off), oldest used first out. It sits below `loader` and never imports it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from . import config as qconfig
from . import hub, metrics
from .catalog import ModelSource, cache_dir, hub_reachable
from .config import Config
from .presets import QuantPreset

log = logging.getLogger(__name__)
MANIFEST = "quantplay-entry.json"
_lock = threading.Lock()


def root(config: Config | None = None) -> Path:
    return cache_dir(config) / "quantized"


def limit_bytes(config: Config | None = None) -> int:
    """The size limit in bytes (a fraction is of the disk free now); 0 when the cache is off."""
    limit = (config or qconfig.current()).disk_cache_limit
    if limit is None:
        return 0
    return limit.resolve(_disk_free(config) if limit.bytes is None else 0)


def _disk_free(config: Config | None = None) -> int:
    target = cache_dir(config)
    while not target.exists():
        target = target.parent
    return shutil.disk_usage(target).free


def enabled(config: Config | None = None) -> bool:
    return limit_bytes(config) > 0


def source_identity(source: ModelSource) -> str | None:
    """What pins the source weights; None when nothing does (then nothing is cached)."""
    if source.kind == "bundled":
        return f"bundled:{Path(source.path).name}"  # the directory name carries the GGUF's digest
    if source.kind == "local":
        files = sorted(Path(source.path).glob("*.safetensors")) + sorted(Path(source.path).glob("*.bin"))
        stamp = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]
        return "local:" + source.path + ":" + hashlib.sha256(repr(stamp).encode()).hexdigest()[:16]
    if source.revision and len(source.revision) == 40:
        return f"hub:{source.path}@{source.revision}"
    return _hub_commit(source.path, source.revision)


@functools.lru_cache(maxsize=64)
def _hub_commit(model_id: str, revision: str | None) -> str | None:
    """The commit the Hub serves now, asked once per process; offline, the commit the local HF cache
    holds (what `local_files_only` loads); neither known: no disk cache."""
    if not hub_reachable():
        commit = hub.cached_commit(model_id, revision)
        return f"hub:{model_id}@{commit}" if commit else None
    try:
        from huggingface_hub import HfApi

        return f"hub:{model_id}@{HfApi().model_info(model_id, revision=revision, timeout=5).sha}"
    except Exception:
        return None


def entry_key(source: ModelSource, preset: QuantPreset, device: str) -> dict[str, Any] | None:
    identity = source_identity(source)
    if identity is None or not preset.quantized:
        return None
    env = metrics.environment(device)
    return {"source": identity, "preset": preset.bnb_kwargs(device), "dtype": preset.resolved_dtype(device),
            "device": device, "torch": env["torch"], "transformers": env["transformers"],
            "bitsandbytes": env["bitsandbytes"]}


def entry_dir(key: dict[str, Any], config: Config | None = None) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return root(config) / digest


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def has(key: dict[str, Any], config: Config | None = None) -> bool:
    """Cheap: an entry is there (not yet verified)."""
    return (entry_dir(key, config) / MANIFEST).is_file()


def read_note(key: dict[str, Any], name: str, config: Config | None = None) -> Any:
    """A JSON note kept beside an entry's weights (e.g. its per-layer weight error), or None."""
    try:
        return json.loads((entry_dir(key, config) / name).read_text())
    except (OSError, ValueError):
        return None


def write_note(key: dict[str, Any], name: str, data: Any, config: Config | None = None) -> None:
    """Keep a JSON note beside an existing entry (atomically; never fails a load)."""
    path = entry_dir(key, config)
    if not (path / MANIFEST).is_file():
        return
    try:
        tmp = path / f".{name}.tmp-{os.getpid()}"
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path / name)
    except OSError as exc:
        log.warning("could not write %s beside disk cache entry %s: %s", name, path.name, exc)


def lookup(key: dict[str, Any], config: Config | None = None) -> Path | None:
    """The verified entry directory for `key`, or None. A corrupt entry is removed."""
    path = entry_dir(key, config)
    manifest = path / MANIFEST
    if not manifest.is_file():
        return None
    try:
        data = json.loads(manifest.read_text())
        ok = data["key"] == key and all(_sha256(path / name) == digest for name, digest in data["files"].items())
    except (OSError, ValueError, KeyError):
        ok = False
    if not ok:
        log.warning("disk cache entry %s is corrupt or stale; rebuilding it", path.name)
        shutil.rmtree(path, ignore_errors=True)
        return None
    os.utime(manifest)  # most recently used
    return path


def store(key: dict[str, Any], model, name: str, config: Config | None = None) -> Path | None:
    """Write a quantized model as a cache entry, atomically. Returns its path (None if it could not)."""
    target = entry_dir(key, config)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp)  # weights and config only: the tokenizer comes from the source
        files = {p.name: _sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        size = sum((tmp / n).stat().st_size for n in files)
        (tmp / MANIFEST).write_text(json.dumps({"key": key, "name": name, "files": files, "bytes": size,
                                                "created": time.time()}, indent=2))
        with _lock:
            if target.exists():
                shutil.rmtree(target, ignore_errors=True)
            os.rename(tmp, target)
    except Exception as exc:  # the cache is an optimisation: never fail a load over it
        log.warning("could not write the disk cache entry for %s: %s", name, exc)
        return None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    enforce_limit(config)
    return target


def entries(config: Config | None = None) -> list[dict[str, Any]]:
    base = root(config)
    found = []
    for manifest in base.glob(f"*/{MANIFEST}") if base.is_dir() else []:
        try:
            data = json.loads(manifest.read_text())
        except (OSError, ValueError):
            continue
        found.append({"id": manifest.parent.name, "name": data.get("name", "?"), "bytes": data.get("bytes", 0),
                      "last_used": manifest.stat().st_mtime, "key": data.get("key", {})})
    return sorted(found, key=lambda e: e["last_used"])


def enforce_limit(config: Config | None = None) -> list[str]:
    """Remove least recently used entries until the cache fits its limit; returns what went."""
    base = root(config)
    removed = []
    for leftover in base.glob(".*.tmp-*") if base.is_dir() else []:
        if time.time() - leftover.stat().st_mtime > 3600:  # debris of a killed write
            shutil.rmtree(leftover, ignore_errors=True)
    items = entries(config)
    total = sum(e["bytes"] for e in items)
    while items and total > limit_bytes(config):
        oldest = items.pop(0)
        shutil.rmtree(base / oldest["id"], ignore_errors=True)
        total -= oldest["bytes"]
        removed.append(oldest["name"])
    return removed


def clear(name: str | None = None, config: Config | None = None) -> int:
    """Delete every entry (or those whose name contains `name`); also leftovers of interrupted writes."""
    base = root(config)
    count = 0
    for e in entries(config):
        if name is None or name in e["name"]:
            shutil.rmtree(base / e["id"], ignore_errors=True)
            count += 1
    if name is None and base.is_dir():
        for leftover in base.glob(".*.tmp-*"):
            shutil.rmtree(leftover, ignore_errors=True)
    return count
