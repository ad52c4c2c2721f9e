import threading
import time

import pytest
import torch

from quantplay import metrics
from quantplay.loader import MemoryBudgetError, ModelCache, parse_budget
from quantplay.presets import PRESETS


@pytest.mark.parametrize("text, expected", [
    ("4GiB", 4 * 2**30), ("4000MB", 4000 * 10**6), ("512M", 512 * 2**20), ("0.6", 600), ("", 600), ("1.5gb", 1.5e9),
])
def test_parse_budget(text, expected):
    assert parse_budget(text, available=1000) == int(expected)


def test_parse_budget_rejects_nonsense():
    with pytest.raises(ValueError, match="QUANTPLAY_MEMORY_BUDGET"):
        parse_budget("lots", 1000)


def test_cache_hit_returns_the_same_model_in_milliseconds(cache, tiny_source):
    first, hit = cache.get(tiny_source, PRESETS["fp32"], "cpu")
    assert not hit and first.footprint_bytes > 0
    start = time.perf_counter()
    again, hit = cache.get(tiny_source, PRESETS["fp32"], "cpu")
    assert hit and again is first
    assert time.perf_counter() - start < 0.05
    assert cache.loads == 1


def test_single_flight_many_threads_one_load(tiny_source):
    calls = []

    def slow_load(source, preset, device_map, device, progress):
        calls.append(preset.name)
        time.sleep(0.3)
        return torch.nn.Linear(8, 8), None, [], "checkpoint"

    cache = ModelCache(budget_bytes=2**30, load_fn=slow_load)
    results = []
    threads = [threading.Thread(target=lambda: results.append(cache.get(tiny_source, PRESETS["int8"], "cpu")))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == ["int8"]
    assert len({id(entry) for entry, _ in results}) == 1
    assert sorted(hit for _, hit in results) == [False] + [True] * 7


def test_failed_load_leaves_the_cache_consistent(tiny_source):
    attempts = []

    def flaky(source, preset, device_map, device, progress):
        attempts.append(1)
        if len(attempts) == 1:
            raise OSError("disk hiccup")
        return torch.nn.Linear(4, 4), None, [], "checkpoint"

    cache = ModelCache(budget_bytes=2**30, load_fn=flaky)
    with pytest.raises(OSError):
        cache.get(tiny_source, PRESETS["nf4"], "cpu")
    assert cache.entries() == [] and cache.resident_bytes() == 0
    entry, hit = cache.get(tiny_source, PRESETS["nf4"], "cpu")
    assert not hit and len(attempts) == 2


def _fixed_size_loader(mib: int):
    def load(source, preset, device_map, device, progress):
        return torch.nn.Linear(mib * 2**18, 1, bias=False), None, [], "checkpoint"  # mib MiB of float32
    return load


def test_lru_eviction_under_the_budget(tiny_source, monkeypatch):
    cache = ModelCache(budget_bytes=25 * 2**20, load_fn=_fixed_size_loader(10))
    monkeypatch.setattr(cache, "estimate", lambda *a: (10 * 2**20, 10 * 2**20))
    for name in ("fp32", "int8"):
        cache.get(tiny_source, PRESETS[name], "cpu")
    cache.get(tiny_source, PRESETS["fp32"], "cpu")  # touch fp32: int8 is now least recently used
    cache.get(tiny_source, PRESETS["nf4"], "cpu")
    assert [e["preset"] for e in cache.entries()] == ["fp32", "nf4"]
    assert [key[1].name for key in cache.evictions] == ["int8"]


def test_models_in_use_are_not_evicted_and_a_too_big_request_is_refused(tiny_source, monkeypatch):
    cache = ModelCache(budget_bytes=25 * 2**20, load_fn=_fixed_size_loader(10), wait_seconds=0.2)
    monkeypatch.setattr(cache, "estimate", lambda *a: (10 * 2**20, 10 * 2**20))
    with cache.lease(tiny_source, PRESETS["fp32"], "cpu"), cache.lease(tiny_source, PRESETS["int8"], "cpu"):
        with pytest.raises(MemoryBudgetError, match="memory budget is 25 MiB"):
            cache.get(tiny_source, PRESETS["nf4"], "cpu")
    cache.get(tiny_source, PRESETS["nf4"], "cpu")  # released: now the LRU one makes room
    assert len(cache.entries()) == 2


def test_eviction_really_frees_memory(tiny_source, monkeypatch):
    cache = ModelCache(budget_bytes=2**30, load_fn=_fixed_size_loader(200))
    monkeypatch.setattr(cache, "estimate", lambda *a: (200 * 2**20, 200 * 2**20))
    metrics.release_memory()
    before = metrics.process_rss_bytes()
    entry, _ = cache.get(tiny_source, PRESETS["fp32"], "cpu")
    del entry
    loaded = metrics.process_rss_bytes()
    assert loaded - before > 150 * 2**20
    assert cache.unload() == 1
    assert metrics.process_rss_bytes() - before < 50 * 2**20


def test_real_quantized_loads_of_the_tiny_model(cache, tiny_source):
    fp32, _ = cache.get(tiny_source, PRESETS["fp32"], "cpu")
    nf4, _ = cache.get(tiny_source, PRESETS["nf4"], "cpu")
    dq, _ = cache.get(tiny_source, PRESETS["nf4-dq"], "cpu")
    int8, _ = cache.get(tiny_source, PRESETS["int8"], "cpu")
    assert type(nf4.model.model.layers[0].mlp.up_proj).__name__ == "Linear4bit"
    assert type(int8.model.model.layers[0].mlp.up_proj).__name__ == "Linear8bitLt"
    # quant state counted: the nf4 absmax tensors are not parameters
    assert nf4.footprint_bytes > nf4.footprint_hf_bytes
    assert nf4.footprint_bytes < fp32.footprint_bytes
    # double quant stores the absmax in uint8 plus a nested state (on a model this small, the nested
    # 256-entry map outweighs the saving; the bundled-model test checks nf4-dq < nf4)
    assert dq.model.model.layers[0].mlp.up_proj.weight.quant_state.nested
    assert fp32.footprint_bytes == fp32.footprint_hf_bytes
