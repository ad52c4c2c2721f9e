"""On-disk cache of quantized weights: a new process loads int8/nf4 without re-quantizing.

An entry is a `save_pretrained` directory of the bitsandbytes-quantized model
(transformers serializes 8-bit and 4-bit weights with their quant state). Its
key covers what could make stale weights: the source (bundled file digest, local
weight files' size and mtime, or a Hub commit), the preset, the device, and the
torch, transformers and bitsandbytes versions. Entries are written into a
temporary directory and renamed into place, carry a manifest with each file's
SHA-256, and are verified before use: a corrupt entry is deleted and rebuilt.
The total size is kept under `QUANTPLAY_DISK_CACHE_LIMIT` (oldest used first out).
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

from . import metrics
from .catalog import ModelSource, cache_dir
from .presets import QuantPreset

log = logging.getLogger(__name__)
MANIFEST = "quantplay-entry.json"
DEFAULT_LIMIT = "8GiB"
_lock = threading.Lock()


def root() -> Path:
    return cache_dir() / "quantized"


def limit_bytes() -> int:
    from .loader import parse_budget

    text = os.environ.get("QUANTPLAY_DISK_CACHE_LIMIT", DEFAULT_LIMIT)
    if text.strip() in ("0", "off"):
        return 0
    return parse_budget(text, available=_disk_free())


def _disk_free() -> int:
    target = cache_dir()
    while not target.exists():
        target = target.parent
    return shutil.disk_usage(target).free


def enabled() -> bool:
    return limit_bytes() > 0


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
    """The commit the Hub serves now, asked once per process; offline or unknown: no disk cache."""
    from .catalog import hub_reachable

    if not hub_reachable():
        return None
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


def entry_dir(key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return root() / digest


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def has(key: dict[str, Any]) -> bool:
    """Cheap: an entry is there (not yet verified)."""
    return (entry_dir(key) / MANIFEST).is_file()


def lookup(key: dict[str, Any]) -> Path | None:
    """The verified entry directory for `key`, or None. A corrupt entry is removed."""
    path = entry_dir(key)
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


def store(key: dict[str, Any], model, name: str) -> Path | None:
    """Write a quantized model as a cache entry, atomically. Returns its path (None if it could not)."""
    target = entry_dir(key)
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
    enforce_limit()
    return target


def entries() -> list[dict[str, Any]]:
    found = []
    for manifest in root().glob(f"*/{MANIFEST}") if root().is_dir() else []:
        try:
            data = json.loads(manifest.read_text())
        except (OSError, ValueError):
            continue
        found.append({"id": manifest.parent.name, "name": data.get("name", "?"), "bytes": data.get("bytes", 0),
                      "last_used": manifest.stat().st_mtime, "key": data.get("key", {})})
    return sorted(found, key=lambda e: e["last_used"])


def enforce_limit() -> list[str]:
    """Remove least recently used entries until the cache fits its limit; returns what went."""
    removed = []
    for leftover in root().glob(".*.tmp-*") if root().is_dir() else []:
        if time.time() - leftover.stat().st_mtime > 3600:  # debris of a killed write
            shutil.rmtree(leftover, ignore_errors=True)
    items = entries()
    total = sum(e["bytes"] for e in items)
    while items and total > limit_bytes():
        oldest = items.pop(0)
        shutil.rmtree(root() / oldest["id"], ignore_errors=True)
        total -= oldest["bytes"]
        removed.append(oldest["name"])
    return removed


def clear(name: str | None = None) -> int:
    """Delete every entry (or those whose name contains `name`); also leftovers of interrupted writes."""
    count = 0
    for e in entries():
        if name is None or name in e["name"]:
            shutil.rmtree(root() / e["id"], ignore_errors=True)
            count += 1
    if name is None and root().is_dir():
        for leftover in root().glob(".*.tmp-*"):
            shutil.rmtree(leftover, ignore_errors=True)
    return count
