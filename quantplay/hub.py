"""The Hugging Face Hub as a user meets it: proxies, the local cache, downloads, refusals.

`catalog` decides what a name means; this module answers its questions about
the Hub with huggingface_hub's own settings (`HF_ENDPOINT`, `HF_HUB_CACHE` /
`HF_HOME`, read once when huggingface_hub is imported), so quantplay never
disagrees with the downloads it triggers:

- `probe_target()`: where a reachability probe must connect. Behind
  `HTTPS_PROXY` that is the proxy (huggingface_hub's HTTP client reads the same
  variables and `NO_PROXY` through `urllib.request.getproxies`), not the Hub,
  which such machines cannot reach directly.
- `cached_commit()` / `cached_models()`: what the local cache can load with
  `local_files_only=True` (a snapshot holding config.json and a weight file).
- `download()`: fetches only what `from_pretrained` reads (config, one weight
  format, tokenizer files), reporting bytes and files to a `progress` callback
  through `progress_tqdm`, the `tqdm_class` snapshot_download accepts.
- `explain()` / `redact()`: a gated, missing or unknown-revision repo said in
  words, naming HF_TOKEN where a token would help; a token never reaches a message.

It knows nothing about quantization, loading or the page.
"""

from __future__ import annotations

import contextvars
import fnmatch
import re
import socket
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

from huggingface_hub import constants as hf_constants
from tqdm.std import tqdm as std_tqdm

Progress = Callable[[float, str], None]
TOKEN = re.compile(r"hf_[A-Za-z0-9]{20,}")
WEIGHTS = ("*.safetensors", "*.bin")
# what AutoConfig / AutoTokenizer / AutoModelForCausalLM read besides the weights
READ_BY_TRANSFORMERS = ("config.json", "generation_config.json", "*.index.json", "tokenizer*", "vocab.*",
                        "merges.txt", "special_tokens_map.json", "added_tokens.json", "chat_template*",
                        "*.tiktoken", "*.model")


# -- reachability --------------------------------------------------------------
def probe_target(endpoint: str | None = None) -> tuple[str, int, str]:
    """(host, port, what it is): the proxy that requests to the endpoint go through, else the endpoint."""
    url = urlparse(endpoint or hf_constants.ENDPOINT or "https://huggingface.co")
    scheme = url.scheme or "https"
    host, port = url.hostname or "huggingface.co", url.port or (443 if scheme == "https" else 80)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(scheme) or proxies.get("all")
    if proxy and not urllib.request.proxy_bypass(host):
        parsed = urlparse(proxy if "://" in proxy else f"http://{proxy}")
        if parsed.hostname:
            default = 443 if parsed.scheme == "https" else 1080 if parsed.scheme.startswith("socks") else 80
            return parsed.hostname, parsed.port or default, f"proxy {parsed.hostname}:{parsed.port or default}"
    return host, port, f"{host}:{port}"


def tcp_reachable(host: str, port: int, timeout: float) -> bool:
    """Whether a TCP connection opens within about `timeout` seconds (name lookup included)."""
    result: list[bool] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    # getaddrinfo ignores the socket timeout, so bound the whole probe with a thread.
    worker = threading.Thread(target=connect, daemon=True)
    worker.start()
    worker.join(timeout + 0.5)
    return bool(result and result[0])


# -- the local cache -----------------------------------------------------------
def _snapshot(repo_id: str, revision: str | None) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    except ValueError:  # not a valid repo id or revision
        return None
    return Path(found).parent if isinstance(found, str) else None


def cached_commit(repo_id: str, revision: str | None = None) -> str | None:
    """The commit of `repo_id` (at `revision`, default main) that the local cache can load offline."""
    snapshot = _snapshot(repo_id, revision)
    if snapshot is None or not any(f for pattern in WEIGHTS for f in snapshot.glob(pattern)):
        return None
    return snapshot.name


def cached_models() -> list[str]:
    """Model repos in the local Hugging Face cache that load offline, sorted."""
    root = Path(hf_constants.HF_HUB_CACHE)
    found = []
    for folder in sorted(root.glob("models--*")) if root.is_dir() else []:
        repo_id = folder.name[len("models--"):].replace("--", "/")
        if cached_commit(repo_id):
            found.append(repo_id)
    return found


# -- downloads -------------------------------------------------------------------
def wanted_files(files: list[str]) -> list[str]:
    """The top-level files from_pretrained reads: one weight format (safetensors when there are any)."""
    top = [f for f in files if "/" not in f]
    weights = next(([f for f in top if fnmatch.fnmatch(f, p)] for p in WEIGHTS
                    if any(fnmatch.fnmatch(f, p) for f in top)), [])
    return sorted(set(weights) | {f for f in top if any(fnmatch.fnmatch(f, p) for p in READ_BY_TRANSFORMERS)})


class DownloadReport:
    """Bytes and files of one snapshot_download, said as one line to a progress callback (at most every
    `every` seconds, and whenever a file completes).

    Bytes arrive on snapshot_download's worker threads, which do not inherit the caller's context
    variables, and gr.Progress finds its event through them: the callback runs in the context of the
    thread that made the report, one call at a time (a context cannot be entered twice at once)."""

    def __init__(self, repo_id: str, progress: Progress, every: float = 0.5):
        self.repo_id, self.progress, self.every = repo_id, progress, every
        self._context = contextvars.copy_context()
        self.bytes_done = self.bytes_total = self.files_done = self.files_total = 0
        self._last = float("-inf")  # the first update is always said
        self._lock = threading.Lock()

    def message(self) -> str:
        return (f"downloading {self.repo_id}: {self.bytes_done / 1e6:.1f} of {self.bytes_total / 1e6:.1f} MB, "
                f"{self.files_done} of {self.files_total} files")

    def update(self, *, bytes_done: int | None = None, bytes_total: int | None = None,
               files_done: int | None = None, files_total: int | None = None) -> None:
        with self._lock:
            file_finished = files_done is not None and files_done != self.files_done
            for name, value in (("bytes_done", bytes_done), ("bytes_total", bytes_total),
                                ("files_done", files_done), ("files_total", files_total)):
                if value is not None:
                    setattr(self, name, int(value))
            now = time.monotonic()
            if not file_finished and now - self._last < self.every:
                return
            self._last = now
            fraction = min(1.0, self.bytes_done / self.bytes_total) if self.bytes_total else 0.0
            self._context.run(self.progress, fraction, self.message())


def progress_tqdm(report: DownloadReport) -> type[std_tqdm]:
    """A tqdm class for snapshot_download(tqdm_class=...) that draws nothing and tells `report`.

    huggingface_hub 2.4 makes three bars from it: "Fetching N files" (one update per finished file),
    "Downloading bytes" (network bytes, with a total it inflates as it goes: not shown) and the
    bytes written to disk, whose total grows as each file starts: the bytes shown."""

    class ForwardingTqdm(std_tqdm):
        def __init__(self, *args, **kwargs):
            kwargs.pop("name", None)
            super().__init__(*args, **{**kwargs, "disable": False, "file": _Discard(), "mininterval": 0})

        def update(self, n: float | None = 1):
            shown = super().update(n)
            desc = self.desc or ""
            if desc.startswith("Fetching"):
                report.update(files_done=self.n, files_total=self.total or 0)
            elif self.unit == "B" and not desc.startswith("Downloading bytes"):
                report.update(bytes_done=self.n, bytes_total=self.total or 0)
            return shown

    return ForwardingTqdm


class _Discard:
    def write(self, text: str) -> None:
        pass

    def flush(self) -> None:
        pass


def download_bars_only() -> None:
    """Hide transformers' own tqdm bars (one "Loading weights" bar per load would drown a server log)
    and keep huggingface_hub's download bars, so a first download does not look like a hang.

    `transformers.utils.logging.disable_progress_bar()` would hide both (in 5.23 it also calls
    huggingface_hub's `disable_progress_bars()`); a tqdm hook reaches transformers' bars alone."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_tqdm_hook(lambda factory, args, kwargs: hf_logging.EmptyTqdm(*args, **kwargs))


def download(repo_id: str, revision: str | None, progress: Progress) -> str:
    """Fetch what from_pretrained reads into the local cache, with progress; returns the commit."""
    from huggingface_hub import HfApi, snapshot_download

    info = HfApi().model_info(repo_id, revision=revision)
    files = wanted_files([s.rfilename for s in info.siblings or []])
    report = DownloadReport(repo_id, progress)
    report.update(files_total=len(files))
    snapshot_download(repo_id, revision=info.sha, allow_patterns=files, tqdm_class=progress_tqdm(report))
    return info.sha


# -- refusals ----------------------------------------------------------------------
def redact(text: str) -> str:
    """The text with anything shaped like a Hugging Face token replaced."""
    return TOKEN.sub("hf_***", text)


def explain(name: str, exc: BaseException, revision: str | None = None) -> str | None:
    """What a person reads when the Hub refused `name` (None when `exc` is not such a refusal).

    transformers wraps huggingface_hub's errors in OSError, so the whole cause chain is searched."""
    from huggingface_hub import errors

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, errors.GatedRepoError):
            return (f"{name!r} is a gated repository: accept its terms at https://huggingface.co/{name}, then set "
                    "HF_TOKEN to a read token of that account (https://huggingface.co/settings/tokens).")
        if isinstance(seen, errors.RepositoryNotFoundError):
            return (f"{name!r} was not found on the Hugging Face Hub: check the spelling; a private repository "
                    "needs HF_TOKEN set to a token that can read it.")
        if isinstance(seen, errors.RevisionNotFoundError):
            return f"{name!r} has no revision {revision or 'main'!r} on the Hugging Face Hub."
        if isinstance(seen, errors.LocalEntryNotFoundError):
            return (f"{name!r} is not complete in the local Hugging Face cache ({hf_constants.HF_HUB_CACHE}) and "
                    "the Hub cannot be asked for the rest.")
        if isinstance(seen, errors.EntryNotFoundError):
            return (f"{name!r} lacks a file transformers needs ({redact(str(seen)).splitlines()[0][:200]}): "
                    "is it a transformers checkpoint?")
        seen = seen.__cause__ or seen.__context__
    return None
