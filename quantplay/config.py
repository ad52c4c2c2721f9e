"""Every setting quantplay reads from the environment, read once, in one place.

`Config.from_env()` runs at start-up (the CLI, `app.py`, `quantplay.launch`):
each `QUANTPLAY_*` variable (and gradio's server name/port, a Space's
`SPACE_ID`) is parsed here and nowhere else, and a malformed value is a
`ConfigError` that names the variable and the forms it accepts, never a silent
default. Tests and the benchmark build one from a mapping
(`Config.from_mapping({...})`) or with `dataclasses.replace`, and pass it down.

Accepted forms:
* sizes take a unit: `4GiB`, `4000MB`, `512M` (K/M/G/T alone are binary, KB/MB/GB
  decimal, any case; `4gb` is 4·10⁹ bytes, not gigabits);
* fractions are written `0.6` or `60%`: of RAM for the memory budget, of free
  disk for the disk cache limit; a bare number above 1 is refused as ambiguous;
* `QUANTPLAY_DISK_CACHE_LIMIT` also takes `0` or `off` (no disk cache);
* switches take 1/0, true/false, yes/no, on/off.

It knows nothing about models; `current()` is the process's config, built on
first use (the entry points build it explicitly, so errors surface at start-up).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"(?i)^\s*(\d+(?:\.\d+)?)\s*(b|kb|mb|gb|tb|kib|mib|gib|tib|k|m|g|t)?\s*(%)?\s*$")
SIZE_FORMS = "a size with a unit ('4GiB', '4000MB', '512M') or a fraction ('0.6' or '60%')"
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


@dataclass(frozen=True)
class Size:
    """A size in bytes, or a fraction of something measured later (RAM, free disk)."""

    bytes: int | None = None
    fraction: float | None = None

    def resolve(self, whole: int) -> int:
        return self.bytes if self.bytes is not None else int((self.fraction or 0.0) * whole)

    def __str__(self) -> str:
        if self.bytes is not None:
            return f"{self.bytes / 2**30:.2f} GiB" if self.bytes >= 2**30 else f"{self.bytes / 2**20:.0f} MiB"
        return f"{self.fraction:.0%}"


def parse_size(text: str, name: str = "size") -> Size:
    """'4GiB' → bytes; '0.6' or '60%' → a fraction; a bare number above 1 is ambiguous."""
    match = _SIZE.match(str(text))
    if not match:
        raise ConfigError(f"{name}={text!r} is not {SIZE_FORMS}.")
    value, unit, percent = float(match.group(1)), (match.group(2) or "").lower(), match.group(3)
    if unit and percent:
        raise ConfigError(f"{name}={text!r} is not {SIZE_FORMS}.")
    if unit:
        return Size(bytes=int(value * _UNITS[unit]))
    fraction = value / 100 if percent else value
    if not 0 < fraction <= 1:
        raise ConfigError(f"{name}={text!r}: a bare number is read as a fraction, from above 0 to 1 "
                          f"(or up to 100%); for a size give a unit, e.g. '{text.strip()}MB'. Accepted: {SIZE_FORMS}.")
    return Size(fraction=fraction)


def _disk_limit(text: str, name: str) -> Size | None:
    return None if text.strip().lower() in ("0", "off") else parse_size(text, name)


def _switch(text: str, name: str) -> bool:
    value = text.strip().lower()
    if value not in _TRUE + _FALSE:
        raise ConfigError(f"{name}={text!r}: use 1/0, true/false, yes/no or on/off.")
    return value in _TRUE


def _count(minimum: int) -> Callable[[str, str], int]:
    def parse(text: str, name: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise ConfigError(f"{name}={text!r}: use a whole number of at least {minimum}.") from None
        if value < minimum:
            raise ConfigError(f"{name}={text!r}: use a whole number of at least {minimum}.")
        return value
    return parse


def _port(text: str, name: str) -> int:
    value = _count(1)(text, name)
    if value > 65535:
        raise ConfigError(f"{name}={text!r}: use a port number from 1 to 65535.")
    return value


def _paths(text: str, name: str) -> tuple[Path, ...]:
    return tuple(Path(d).expanduser().resolve() for d in text.split(os.pathsep) if d.strip())


def _names(text: str, name: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip())


def _text(text: str, name: str) -> str:
    return text.strip()


@dataclass(frozen=True)
class Limits:
    """What one request may ask (part of the config; `validate` checks requests against it)."""

    max_prompt_chars: int = 4000
    max_prompt_tokens: int = 512  # prefill stays short; longer prompts keep their end
    max_new_tokens: int = 512
    max_variants: int = 5  # fp32 + 4


@dataclass(frozen=True)
class Config:
    cache_dir: Path = field(default_factory=lambda: Path.home() / ".cache" / "quantplay")
    model_dirs: tuple[Path, ...] = ()
    memory_budget: Size = Size(fraction=0.6)
    vram_budget: Size = Size(fraction=0.9)  # of free VRAM (placement.py says why 0.9)
    disk_cache_limit: Size | None = Size(bytes=8 * 2**30)
    trust_remote_code: bool = False
    limits: Limits = Limits()
    max_sessions: int = 8
    max_batch: int = 8
    queue_size: int = 32
    preload: tuple[str, ...] = ()
    server_name: str = ""  # empty: 0.0.0.0 on a Space, else 127.0.0.1
    server_port: int = 7860
    share: bool = False
    space_id: str = ""
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)  # variable -> "environment"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Config:
        return cls.from_mapping(os.environ if environ is None else environ)

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, str]) -> Config:
        """Parse every known variable present in `mapping`; the rest keep their defaults."""
        top: dict[str, Any] = {}
        limits: dict[str, Any] = {}
        sources = {}
        for var in VARIABLES:
            if var.name not in mapping:
                continue
            value = var.parse(str(mapping[var.name]), var.name)
            (limits if var.field.startswith("limits.") else top)[var.field.removeprefix("limits.")] = value
            sources[var.name] = "environment"
        return cls(**top, limits=Limits(**limits), sources=sources)

    @property
    def host(self) -> str:
        return self.server_name or ("0.0.0.0" if self.space_id else "127.0.0.1")

    def value_of(self, var: Variable) -> Any:
        obj: Any = self
        for part in var.field.split("."):
            obj = getattr(obj, part)
        return obj

    def describe(self) -> list[dict[str, Any]]:
        """Every setting: variable, effective value (as text), where it came from, what it does."""
        rows = []
        for var in VARIABLES:
            value = self.value_of(var)
            shown = ("off" if value is None else os.pathsep.join(map(str, value)) if isinstance(value, tuple)
                     else str(value))
            rows.append({"variable": var.name, "value": shown, "source": self.sources.get(var.name, "default"),
                         "help": var.help})
        return rows


@dataclass(frozen=True)
class Variable:
    name: str
    field: str
    parse: Callable[[str, str], Any]
    help: str


VARIABLES: tuple[Variable, ...] = (
    Variable("QUANTPLAY_CACHE_DIR", "cache_dir", lambda t, n: Path(t).expanduser() if t.strip() else Config().cache_dir,
             "where the converted bundled model and the disk cache live"),
    Variable("QUANTPLAY_MODEL_DIRS", "model_dirs", _paths,
             f"directories ({os.pathsep}-separated) whose save_pretrained models may be loaded by absolute path"),
    Variable("QUANTPLAY_MEMORY_BUDGET", "memory_budget", parse_size,
             "RAM for loaded variants: a size, or a fraction of available RAM (of a container's limit)"),
    Variable("QUANTPLAY_VRAM_BUDGET", "vram_budget", parse_size,
             "VRAM for loaded variants on a CUDA GPU: a size, or a fraction of free VRAM"),
    Variable("QUANTPLAY_DISK_CACHE_LIMIT", "disk_cache_limit", _disk_limit,
             "disk cache of quantized weights: a size, a fraction of free disk, or 0/off"),
    Variable("QUANTPLAY_TRUST_REMOTE_CODE", "trust_remote_code", _switch,
             "run custom model code from a repository (never taken from a request)"),
    Variable("QUANTPLAY_MAX_PROMPT_CHARS", "limits.max_prompt_chars", _count(1), "longest prompt, in characters"),
    Variable("QUANTPLAY_MAX_PROMPT_TOKENS", "limits.max_prompt_tokens", _count(1),
             "longest prompt, in tokens (longer prompts keep their end)"),
    Variable("QUANTPLAY_MAX_NEW_TOKENS", "limits.max_new_tokens", _count(1), "most new tokens per variant"),
    Variable("QUANTPLAY_MAX_VARIANTS", "limits.max_variants", _count(1), "most variants per request, fp32 included"),
    Variable("QUANTPLAY_MAX_SESSIONS", "max_sessions", _count(1), "comparisons that run at once (gradio concurrency)"),
    Variable("QUANTPLAY_MAX_BATCH", "max_batch", _count(1),
             "most prompts one fp32 generation decodes at once (batching.py); 1 turns batching off"),
    Variable("QUANTPLAY_QUEUE_SIZE", "queue_size", _count(1), "requests that may wait in gradio's queue"),
    Variable("QUANTPLAY_PRELOAD", "preload", _names, "presets of the default model loaded at start-up, e.g. fp32,int8"),
    Variable("GRADIO_SERVER_NAME", "server_name", _text, "address the page listens on"),
    Variable("GRADIO_SERVER_PORT", "server_port", _port, "port the page listens on"),
    Variable("QUANTPLAY_SHARE", "share", _switch, "make a public gradio share link"),
    Variable("SPACE_ID", "space_id", _text, "set by Hugging Face Spaces: listen on 0.0.0.0"),
)

_current: Config | None = None


def current() -> Config:
    """The process's config: built from the environment on first use, or what `use()` set."""
    global _current
    if _current is None:
        _current = Config.from_env()
    return _current


def use(config: Config) -> Config:
    """Make `config` the process's config (entry points, after building it at start-up)."""
    global _current
    _current = config
    return config
