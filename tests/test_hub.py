"""The Hub as a user meets it: a proxy, a model already in the local HF cache, download progress, refusals.

huggingface_hub reads HF_HOME, HF_HUB_OFFLINE and HF_ENDPOINT once, when it is imported, so whatever depends
on them end to end runs in a subprocess with its own environment; in-process tests point the one constant
they need (`HF_HUB_CACHE`) at a temporary cache with monkeypatch.
"""

from __future__ import annotations

import contextvars
import json
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import httpx2
import pytest
from huggingface_hub import constants as hf_constants
from huggingface_hub import errors as hf_errors
from server import child_env
from tiny import build_tiny_model

from quantplay import catalog, hub, pretrained
from quantplay.catalog import ModelSource, ModelUnavailable

COMMIT = "0123456789abcdef0123456789abcdef01234567"
TOKEN = "hf_" + "aB3" * 10  # shaped like a real token


# -- helpers ------------------------------------------------------------------------
def place_in_hf_cache(hub_cache: Path, repo_id: str, model_dir: Path, files: list[str] | None = None) -> Path:
    """Lay out `model_dir`'s files as huggingface_hub's cache holds a download of `repo_id` at COMMIT."""
    repo = hub_cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    for f in sorted(model_dir.iterdir()):
        if files is None or f.name in files:
            shutil.copy(f, snapshot / f.name)
    return snapshot


def clean_env(**extra: str) -> dict[str, str]:
    """A child's environment without this machine's proxy, Hub-cache and offline settings."""
    dropped = {"HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME", "HF_HUB_CACHE", "HF_ENDPOINT", "NO_PROXY",
               "HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY"}
    return {**{k: v for k, v in child_env().items() if k.upper() not in dropped}, **extra}


def reachable_in_child(**env: str) -> str:
    code = "from quantplay import catalog; print(catalog.hub_reachable(timeout=1.0))"
    out = subprocess.run([sys.executable, "-c", code], env=clean_env(**env), capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()


@pytest.fixture
def ports():
    """(a port that accepts connections, a port where nothing listens)."""
    listening = socket.create_server(("127.0.0.1", 0))
    closed = socket.create_server(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()
    yield listening.getsockname()[1], closed_port
    listening.close()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-hub"))


# -- offline, as huggingface_hub decides; the probe through a proxy ---------------------
def test_transformers_offline_is_offline_without_probing():
    code = ("from unittest import mock; from quantplay import catalog\n"
            "with mock.patch.object(catalog, '_probe', side_effect=AssertionError('probed')):\n"
            "    print(catalog.hub_reachable())\n")
    out = subprocess.run([sys.executable, "-c", code], env=clean_env(TRANSFORMERS_OFFLINE="1"), capture_output=True,
                         text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr[-2000:]


def test_the_probe_connects_to_the_https_proxy(ports):
    open_port, closed_port = ports
    # The Hub itself is unreachable from the test machine: True can only come from connecting to the proxy.
    assert reachable_in_child(HTTPS_PROXY=f"http://127.0.0.1:{open_port}") == "True"
    # and on a machine that reaches the Hub, a dead proxy still means unreachable, as it does for downloads
    assert reachable_in_child(HTTPS_PROXY=f"http://127.0.0.1:{closed_port}") == "False"


def test_no_proxy_sends_the_probe_straight_to_the_endpoint(ports):
    open_port, closed_port = ports
    endpoint = {"HF_ENDPOINT": f"https://127.0.0.1:{open_port}", "HTTPS_PROXY": f"http://127.0.0.1:{closed_port}"}
    assert reachable_in_child(**endpoint, NO_PROXY="127.0.0.1") == "True"
    assert reachable_in_child(**endpoint) == "False"  # the same endpoint through the dead proxy


def test_probe_target_names_the_proxy_with_its_port(monkeypatch):
    for name in ("NO_PROXY", "no_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "proxy.internal:3128")
    assert hub.probe_target("https://huggingface.co") == ("proxy.internal", 3128, "proxy proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", ".huggingface.co,huggingface.co")
    assert hub.probe_target("https://huggingface.co") == ("huggingface.co", 443, "huggingface.co:443")


# -- a model in the local HF cache, with the Hub unreachable ----------------------------------
def test_a_cached_hub_model_resolves_offline_pinned_to_its_commit(tmp_path, tiny_model, monkeypatch):
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))
    place_in_hf_cache(tmp_path, "some-org/some-model", tiny_model)
    place_in_hf_cache(tmp_path, "some-org/config-only", tiny_model, files=["config.json"])  # cannot load offline
    source = catalog.resolve("some-org/some-model")
    assert (source.kind, source.path, source.revision, source.local_only) == (
        "hub", "some-org/some-model", COMMIT, True)
    assert pretrained.where(source) == {"revision": COMMIT, "local_files_only": True}
    assert hub.cached_models() == ["some-org/some-model"]
    assert "some-org/some-model" in catalog.choices() and "some-org/some-model" in catalog.available_now()
    with pytest.raises(ModelUnavailable, match="Models available offline: .*some-org/some-model"):
        catalog.resolve("some-org/config-only")


def test_cli_compares_a_cached_hub_model_offline_and_keys_the_disk_cache_by_its_commit(tmp_path, tiny_model):
    home = tmp_path / "hf-home"
    place_in_hf_cache(home / "hub", "some-org/some-model", tiny_model)
    env = clean_env(HF_HOME=str(home), HF_HUB_OFFLINE="1", QUANTPLAY_CACHE_DIR=str(tmp_path / "quantplay"),
                    QUANTPLAY_DISK_CACHE_LIMIT="1G")

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "quantplay", *args], env=env, capture_output=True, text=True,
                              timeout=300)

    out = cli("compare", "--model", "some-org/some-model", "--variants", "int8", "--prompt", "Hi",
              "--max-new-tokens", "4", "--device-map", "cpu", "--json")
    assert out.returncode == 0, out.stderr[-3000:]
    variants = {v["name"]: v for v in json.loads(out.stdout)["variants"]}
    assert set(variants) == {"fp32", "int8"}
    assert all(v["status"] == "done" and v["text"] for v in variants.values()), variants
    listed = json.loads(cli("cache", "list", "--json").stdout)["entries"]
    assert [e["key"]["source"] for e in listed] == [f"hub:some-org/some-model@{COMMIT}"]

    out = cli("compare", "--model", "some-org/not-cached", "--variants", "int8", "--prompt", "Hi", "--json")
    assert out.returncode == 2, out.stderr[-3000:]
    assert "'some-org/not-cached'" in out.stderr and "some-org/some-model" in out.stderr.splitlines()[-1]


def test_with_the_hub_unreachable_a_cached_model_resolves_and_another_fails_fast(tmp_path, tiny_model, ports):
    """Without HF_HUB_OFFLINE: the probe finds nothing at the endpoint, then the local cache decides."""
    place_in_hf_cache(tmp_path / "hub", "some-org/some-model", tiny_model)
    code = ("import time; from quantplay import catalog\n"
            "print(catalog.resolve('some-org/some-model').revision)\n"
            "t = time.perf_counter()\n"
            "try:\n    catalog.resolve('some-org/not-cached')\nexcept catalog.ModelUnavailable as e:\n"
            "    print(round(time.perf_counter() - t, 2)); print(e)\n")
    env = clean_env(HF_HOME=str(tmp_path), HF_ENDPOINT=f"http://127.0.0.1:{ports[1]}")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    commit, seconds, message = out.stdout.splitlines()
    assert commit == COMMIT, out.stderr[-2000:]
    assert "some-org/some-model" in message.split("Models available offline:")[1]
    # The clock starts after the imports and the probe (the first resolve ran it): "fast" guards against
    # from_pretrained's retries (tens of seconds); the margin is for a loaded 2-core machine.
    assert float(seconds) < 10.0


# -- downloads show progress ------------------------------------------------------------
def test_download_bars_forward_bytes_and_files_to_the_progress_callback():
    calls: list[tuple[float, str]] = []
    report = hub.DownloadReport("some/model", lambda fraction, message: calls.append((fraction, message)), every=0)
    bar = hub.progress_tqdm(report)
    # the three bars huggingface_hub 2.4's snapshot_download makes from tqdm_class, with its arguments
    files = bar(desc="Fetching 5 files", total=5)
    transfer = bar(desc="Downloading bytes", total=0, initial=0, unit="B", unit_scale=True, bar_format="{desc}")
    written = bar(desc="Reconstructing (incomplete total...)", total=0, initial=0, unit="B", unit_scale=True)
    written.total = 45_600_000  # grown as each file starts
    transfer.update(99_000_000)  # network bytes, with an inflated total: not what is shown
    written.update(12_300_000)
    files.update(1)
    files.update(1)
    fraction, message = calls[-1]
    assert message == "downloading some/model: 12.3 of 45.6 MB, 2 of 5 files"
    assert fraction == pytest.approx(12.3 / 45.6)


def test_download_reports_are_throttled_except_when_a_file_finishes():
    calls: list[str] = []
    report = hub.DownloadReport("m", lambda fraction, message: calls.append(message), every=3600)
    report.update(files_total=2)  # the first report
    report.update(bytes_done=1, bytes_total=10)  # within the interval: not said
    report.update(files_done=1)
    assert calls == ["downloading m: 0.0 of 0.0 MB, 0 of 2 files", "downloading m: 0.0 of 0.0 MB, 1 of 2 files"]


def test_only_what_from_pretrained_reads_is_downloaded():
    repo = ["config.json", "generation_config.json", "model.safetensors", "pytorch_model.bin", "tokenizer.json",
            "tokenizer_config.json", "special_tokens_map.json", "merges.txt", "vocab.json", "README.md",
            "onnx/model.onnx", "flax_model.msgpack", "rust_model.ot"]
    assert hub.wanted_files(repo) == ["config.json", "generation_config.json", "merges.txt", "model.safetensors",
                                      "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json",
                                      "vocab.json"]
    assert "pytorch_model.bin" in hub.wanted_files(["config.json", "pytorch_model.bin"])  # the only weights


def test_resolve_downloads_with_progress_when_the_hub_answers(monkeypatch, tmp_path, tiny_model):
    monkeypatch.setattr(catalog, "hub_reachable", lambda: True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))
    place_in_hf_cache(tmp_path, "org/cached", tiny_model)
    fetched = []
    monkeypatch.setattr(hub, "download", lambda repo_id, revision, progress: fetched.append(repo_id))
    catalog.resolve("org/model")  # no progress callback: a caller that only needs the name
    assert fetched == []
    source = catalog.resolve("org/model", progress=lambda fraction, message: None)
    assert fetched == ["org/model"] and source.local_only is False
    catalog.resolve("org/cached", progress=lambda fraction, message: None)  # already here: no Hub round trip
    assert fetched == ["org/model"]


# -- refusals say which, and never carry a token ----------------------------------------------
def http_error(cls, message: str):
    response = httpx2.Response(401, request=httpx2.Request("GET", "https://huggingface.co/api/models/org/x"))
    return cls(message, response=response)


@pytest.mark.parametrize("cls, said", [
    (hf_errors.GatedRepoError, "is a gated repository: accept its terms at https://huggingface.co/org/x, then set "
                               "HF_TOKEN"),
    (hf_errors.RepositoryNotFoundError, "was not found on the Hugging Face Hub: check the spelling; a private "
                                        "repository needs HF_TOKEN"),
    (hf_errors.RevisionNotFoundError, "has no revision 'v9' on the Hugging Face Hub"),
])
def test_hub_refusals_say_which_inside_transformers_oserror(cls, said):
    source = ModelSource("org/x", "hub", "org/x", "org/x", revision="v9")
    try:
        try:
            raise http_error(cls, f"401 for org/x with Authorization: Bearer {TOKEN}")
        except hf_errors.HfHubHTTPError as exc:
            raise OSError(f"You are trying to access a gated repo. {exc}") from exc  # as transformers wraps it
    except OSError as wrapped:
        message = str(pretrained.unavailable(source, wrapped))
    assert said in message and TOKEN not in message


def test_a_token_in_an_error_never_reaches_the_message():
    source = ModelSource("org/x", "hub", "org/x", "org/x")
    message = str(pretrained.unavailable(source, OSError(f"request failed: token={TOKEN} rejected")))
    assert TOKEN not in message and "token=hf_*** rejected" in message


def test_a_failed_download_is_refused_without_the_token(monkeypatch):
    monkeypatch.setattr(catalog, "hub_reachable", lambda: True)

    def gated(repo_id, revision, progress):
        raise http_error(hf_errors.GatedRepoError, f"Access to {repo_id} is restricted ({TOKEN})")

    monkeypatch.setattr(hub, "download", gated)
    with pytest.raises(ModelUnavailable, match="'org/gated' is a gated repository") as info:
        catalog.resolve("org/gated", progress=lambda fraction, message: None)
    assert TOKEN not in str(info.value)
    monkeypatch.setattr(hub, "download", lambda *a: (_ for _ in ()).throw(ConnectionError(f"reset {TOKEN}")))
    with pytest.raises(ModelUnavailable, match=r"Could not download 'org/gone': reset hf_\*\*\*$"):
        catalog.resolve("org/gone", progress=lambda fraction, message: None)



def test_reports_from_download_threads_reach_the_callers_context():
    """gr.Progress finds its event through context variables, which worker threads do not inherit."""
    event = contextvars.ContextVar("event", default=None)
    event.set("request-1")
    seen: list[str | None] = []
    report = hub.DownloadReport("m", lambda fraction, message: seen.append(event.get()), every=0)
    workers = [threading.Thread(target=report.update, kwargs={"bytes_done": i, "bytes_total": 9}) for i in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert seen == ["request-1"] * 4
