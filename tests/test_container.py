"""The app inside a container's memory limit: a real cgroup v1 memory group of 1.2 GiB.

What issue 12 measured: inside such a group, `/status` reported a 13.6 GiB budget (the host's
RAM), so a big request would have been admitted and the kernel's OOM killer would have ended the
server. Here app.py runs in the group from its first instruction (`cgroups.command_in`) and must
report a budget below the limit that names the cgroup, refuse a model too big for it with the
limit named, keep serving, and complete the next request, with no OOM kill in the group.

The too-big model is a config-only directory (~0.7 B parameters from its config, no weights): a
refusal is decided from the estimate before any weight is read. A request that got past the
budget would have to fit for real, so the request that completes quantizes (int8), which is
anonymous memory, unlike safetensors-mapped fp32 weights that the kernel may drop as page cache.

Root and a writable cgroup v1 memory controller are needed; elsewhere the test is skipped with
the reason (`cgroups.own_memory_group`).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from cgroups import command_in, memory_group, oom_kills
from gradio_client import Client
from server import running_app

from quantplay import resources
from quantplay.config import Config, Size
from quantplay.errors import MemoryBudgetError
from quantplay.loader import ModelCache
from quantplay.presets import PRESETS

GiB, MiB = 2**30, 2**20
LIMIT = int(1.2 * GiB)
BIG = {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 16, "num_attention_heads": 16,
       "num_key_value_heads": 4}  # ~0.7 B parameters: 2.7 GiB in fp32, 0.7 GiB in int8


def config_only_model(tiny_dir: Path, root: Path) -> Path:
    """The tiny model's tokenizer with a config scaled up to ~0.7 B parameters, and no weights."""
    path = root / "big-config-only"
    path.mkdir(exist_ok=True)
    for item in tiny_dir.iterdir():
        if item.name.startswith("tokenizer") or item.name == "special_tokens_map.json":
            (path / item.name).write_bytes(item.read_bytes())
    config = json.loads((tiny_dir / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, **BIG}))
    return path


def app_in_group(group: Path, timeout: float = 240.0):
    """app.py started inside `group` (its pid joins before anything else runs), stopped afterwards."""
    return running_app(timeout=timeout, launcher=lambda command: command_in(group, *command[1:]))


@pytest.mark.slow
def test_the_app_in_a_1_2_gib_memory_cgroup(tiny_dir, models_root):
    big = config_only_model(tiny_dir, models_root)
    with memory_group(LIMIT) as group:
        limit = int((group / "memory.limit_in_bytes").read_text())  # the kernel rounds down to a page
        with app_in_group(group) as (url, proc):
            client = Client(url, verbose=False)
            status = client.predict(api_name="/status")
            with pytest.raises(Exception) as refused:
                client.predict(model=str(big), variants=["int8"], prompt="Hi", max_new_tokens=8, api_name="/compare")
            final = client.predict(model=str(tiny_dir), variants=["int8"], prompt="Hi", max_new_tokens=8,
                                   api_name="/compare")
            after = client.predict(api_name="/status")
            alive = proc.poll() is None
        kills = oom_kills(group)
    source = f"cgroup v1 memory.limit_in_bytes ({group})"
    budget = status["budget"]
    assert 0 < budget["bytes"] < limit and budget["limit_bytes"] == limit and budget["limit_source"] == source
    assert source in budget["source"] and status["budget_bytes"] == budget["bytes"]
    assert list(status["budgets"]) == ["cpu"] and status["budgets"]["cpu"]["bytes"] == budget["bytes"]  # no GPU here
    assert (status["limits"]["memory_limit_bytes"], status["limits"]["memory_limit_source"]) == (limit, source)
    message = str(refused.value)
    assert "These 2 variants need about" in message and f"the memory budget is {budget['bytes'] / MiB:.0f} MiB" in message
    assert source in message and "larger memory limit" in message
    assert alive and kills == 0
    assert final["done"] and [v["status"] for v in final["variants"]] == ["done", "done"]
    assert all(v["new_tokens"] == 8 for v in final["variants"])
    assert final["environment"]["memory_limit_source"] == source
    assert after["loads"] == 2 and after["budget"] == budget


# -- the loader's budget and refusals, under a container limit read from a fake cgroup ----------------
LIMIT_SOURCE = "cgroup v1 memory.limit_in_bytes (/sys/fs/cgroup/memory/app)"


@pytest.fixture
def in_a_container(monkeypatch):
    """This process seen as a fresh server (300 MiB resident) inside a 1.2 GiB container on a big host: the test
    process's own RSS depends on what earlier tests loaded. (On CUDA the budget is VRAM: no cgroup.)"""
    if torch.cuda.is_available():
        pytest.skip("with a CUDA GPU the loader's budget is VRAM, which no cgroup limits")
    monkeypatch.setattr(resources, "memory_limit", lambda *roots: resources.Limit(LIMIT, LIMIT_SOURCE))
    monkeypatch.setattr(resources, "own_rss_bytes", lambda: 300 * MiB)
    monkeypatch.setattr(resources, "host_available_bytes", lambda: 64 * GiB)


def test_the_cache_budget_is_the_containers(in_a_container):
    cache = ModelCache(config=Config())
    assert cache.budget.limit_bytes == LIMIT and cache.budget.limit_source == LIMIT_SOURCE
    assert cache.budget_bytes == cache.budget.bytes < LIMIT - cache.budget.baseline_bytes
    given = ModelCache(budget_bytes=123, config=Config())
    assert (given.budget_bytes, given.budget.limit_bytes) == (123, None)


def test_a_refusal_names_the_budget_and_the_limit(in_a_container, tiny_source):
    cache = ModelCache(config=Config(memory_budget=Size(bytes=1000)))
    with pytest.raises(MemoryBudgetError) as refused:
        cache.check_fits([(tiny_source, PRESETS["fp32"], "cpu"), (tiny_source, PRESETS["int8"], "cpu")])
    message = str(refused.value)
    assert "the memory budget is 0 MiB (0 MiB as configured); the container's memory limit is 1.20 GiB " \
           f"({LIMIT_SOURCE})" in message
    assert "run with a larger memory limit" in message


def test_a_given_budget_is_refused_as_before(tiny_source):
    with pytest.raises(MemoryBudgetError) as refused:  # the tiny model is ~0.4 MiB in fp32
        ModelCache(budget_bytes=1000, config=Config()).check_fits([(tiny_source, PRESETS["fp32"], "cpu")])
    assert "the memory budget is 0 MiB (given to ModelCache). Pick fewer variants, or raise " \
           "QUANTPLAY_MEMORY_BUDGET." in str(refused.value)


def test_results_and_the_memory_panel_name_the_limit(in_a_container):
    from quantplay import metrics, views

    environment = metrics.environment("cpu")
    assert (environment["memory_limit_bytes"], environment["memory_limit_source"]) == (LIMIT, LIMIT_SOURCE)
    assert environment["cpu_count"] >= 1 and environment["cpu_source"]
    snapshot = {"process_rss_bytes": 300 * MiB, "process_rss_peak_bytes": 310 * MiB, "cuda_allocated_bytes": None,
                "device_available_bytes": 900 * MiB, "device_total_bytes": 64 * GiB}
    text = views.memory_markdown(snapshot, 400 * MiB, 0, resources.describe())
    assert text.endswith(f"limit: 1.20 GiB ({LIMIT_SOURCE}) · {environment['cpu_count']} CPUs "
                         f"({environment['cpu_source']})")
