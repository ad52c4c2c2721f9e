"""The placement plan on CPU, with estimates from the shipped configs and injected device sizes."""

from functools import cache

import pytest

from quantplay import placement
from quantplay.config import Config
from quantplay.errors import MemoryBudgetError
from quantplay.estimator import count_weights, estimate_bytes, load_config
from quantplay.presets import get_preset

GiB = 2**30


@cache
def needs(model: str, names: tuple[str, ...]) -> list[placement.Need]:
    counts = count_weights(load_config(model)[0])
    return [placement.Need(n, get_preset(n).quantized, estimate_bytes(counts, get_preset(n), "cuda:0")) for n in names]


def test_8b_on_24_gib_puts_fp32_in_ram_and_the_quantized_on_the_gpu():
    plan = placement.plan(needs("meta-llama/Llama-3.1-8B", ("fp32", "nf4", "int8")), 64 * GiB, 24 * GiB)
    assert [(p.name, p.device) for p in plan.placements] == [("fp32", "cpu"), ("nf4", "cuda:0"), ("int8", "cuda:0")]
    assert plan.placement("fp32").reason.startswith("fp32 · in RAM: does not fit in 24 GiB VRAM")
    assert plan.placement("nf4").reason == "nf4 · on GPU"
    assert plan.ram_bytes == plan.placement("fp32").estimate_bytes > 30e9
    assert plan.vram_bytes <= 24 * GiB


def test_70b_fp32_fits_neither_budget_and_the_refusal_names_both():
    with pytest.raises(MemoryBudgetError) as err:
        placement.plan(needs("meta-llama/Llama-3.1-70B", ("fp32", "nf4")), 64 * GiB, 80 * GiB)
    message = str(err.value)
    assert "fp32 needs 262.8 GiB" in message  # 70.6e9 parameters × 4 bytes
    assert "VRAM budget of 80 GiB" in message and "RAM budget of 64 GiB" in message
    assert "nf4 " in message.split("Estimates:")[1]


def test_70b_nf4_alone_goes_on_an_80_gib_gpu():
    plan = placement.plan(needs("meta-llama/Llama-3.1-70B", ("nf4",)), 64 * GiB, 80 * GiB)
    assert plan.placement("nf4").device == "cuda:0" and 30 * GiB < plan.vram_bytes < 45 * GiB


def test_135m_on_16_gib_runs_everything_on_the_gpu():
    plan = placement.plan(needs("HuggingFaceTB/SmolLM2-135M-Instruct", ("fp32", "fp16", "int8", "nf4")),
                          4 * GiB, 16 * GiB)
    assert {p.device for p in plan.placements} == {"cuda:0"}
    assert plan.ram_bytes == 0 and plan.placement("fp32").reason == "fp32 · on GPU"


def test_without_a_gpu_everything_stays_on_cpu():
    plan = placement.plan(needs("HuggingFaceTB/SmolLM2-135M-Instruct", ("fp32", "nf4")), 4 * GiB, None)
    assert [(p.device, p.reason) for p in plan.placements] == [("cpu", "fp32 · on CPU: no CUDA GPU"),
                                                               ("cpu", "nf4 · on CPU: no CUDA GPU")]
    assert plan.to_dict()["vram_budget_bytes"] is None and plan.to_dict()["ram_budget_bytes"] == 4 * GiB


def test_without_a_gpu_too_much_is_refused_naming_the_ram_budget():
    with pytest.raises(MemoryBudgetError, match="the RAM budget is 64 GiB; no CUDA GPU"):
        placement.plan(needs("meta-llama/Llama-3.1-70B", ("fp32",)), 64 * GiB, None)


def test_quantized_variants_that_overflow_the_gpu_are_refused():
    with pytest.raises(MemoryBudgetError, match="quantized variants need .* VRAM budget is 24 GiB"):
        placement.plan(needs("meta-llama/Llama-3.1-70B", ("nf4",)), 512 * GiB, 24 * GiB)


def test_a_second_reference_goes_to_ram_once_the_first_fills_the_gpu():
    plan = placement.plan([("fp32", False, 10 * GiB), ("fp16", False, 5 * GiB), ("nf4", True, 2 * GiB)],
                          8 * GiB, 14 * GiB)
    assert [p.device for p in plan.placements] == ["cuda:0", "cpu", "cuda:0"]
    assert plan.placement("fp16").reason == "fp16 · in RAM: does not fit in 14 GiB VRAM beside 12 GiB of quantized variants"


def _cuda_cache(ram: int, vram: int):
    from quantplay.loader import ModelCache

    return ModelCache(config=Config(), budgets={"cpu": ram, "cuda": vram})


def test_a_request_on_a_cuda_machine_is_placed_by_the_plan_over_the_caches_two_budgets(tiny_source):
    """comparison.place, as every request on a CUDA machine runs it (cuda=True injected: no GPU here)."""
    from quantplay.comparison import place

    presets = [get_preset(n) for n in ("fp32", "nf4")]
    cache = _cuda_cache(8 * GiB, 8 * GiB)
    nf4 = cache.estimate(tiny_source, presets[1], "cuda:0")[0]
    assert [(p.device_map, p.words) for p in place(cache, tiny_source, presets, "auto", True)] == [
        ("cuda:0", "fp32 · on GPU"), ("cuda:0", "nf4 · on GPU")]
    small = _cuda_cache(8 * GiB, 2 * nf4)  # room for nf4, not for fp32 beside it
    fp32, quantized = place(small, tiny_source, presets, "auto", True)
    assert (fp32.device_map, quantized.device_map) == ("cpu", "cuda:0")
    assert fp32.words.startswith("fp32 · in RAM: does not fit in") and "VRAM beside" in fp32.words
    with pytest.raises(MemoryBudgetError) as refused:  # fits neither budget
        place(_cuda_cache(nf4, 2 * nf4), tiny_source, presets, "auto", True)
    assert "VRAM budget of" in str(refused.value) and "RAM budget of" in str(refused.value)
    # a device_map the person chose is kept, and the column still says where
    assert [(p.device_map, p.words) for p in place(small, tiny_source, presets, "cpu", True)] == [
        ("cpu", "fp32 · in RAM"), ("cpu", "nf4 · in RAM")]
    # on a CPU-only machine nothing is planned and the column says nothing
    assert [(p.device_map, p.words) for p in place(small, tiny_source, presets, "auto", False)] == [("auto", None)] * 2


def test_a_variant_vram_peak_is_its_own_between_interleaved_turns(monkeypatch):
    """metrics.VramTurns against a simulated device counter: two generations take turns; each one's peak
    is its own KV cache and transient, whatever the other holds."""
    import torch

    from quantplay.metrics import VramTurns

    device = {"allocated": 1000, "peak": 1000}  # 1000 bytes of weights already there

    def alloc(n):
        device["allocated"] += n
        device["peak"] = max(device["peak"], device["allocated"])

    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda d=None: device.update(peak=device["allocated"]))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda d=None: device["allocated"])
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda d=None: device["peak"])
    a, b = VramTurns("cuda:0"), VramTurns("cuda:0")
    for _ in range(3):  # a: keeps 10 bytes of KV a step, 50 transient; b: keeps 100, 500 transient
        for turns, keep, transient in ((a, 10, 50), (b, 100, 500)):
            turns.begin()
            alloc(transient + keep)
            alloc(-transient)
            turns.end()
    assert a.own_peak_bytes == 2 * 10 + 60 and a.kept == 30  # its own, not b's 300 bytes of KV
    assert b.own_peak_bytes == 2 * 100 + 600 and b.kept == 300
    assert device["allocated"] == 1000 + 330


def test_the_shipped_tinyllama_config_has_its_published_size():
    # gpu-check benches this ~1B config; 1,100,048,384 is TinyLlama-1.1B's parameter count on the Hub
    assert count_weights(load_config("TinyLlama/TinyLlama-1.1B-Chat-v1.0")[0]).parameters == 1_100_048_384
    plan = placement.plan(needs("TinyLlama/TinyLlama-1.1B-Chat-v1.0", ("fp32", "int8", "nf4")), 8 * GiB, 4 * GiB)
    assert [p.device for p in plan.placements] == ["cpu", "cuda:0", "cuda:0"]  # 4.1 GiB of fp32 beside 2 GiB


def test_the_column_says_where_a_loaded_variant_runs_only_on_a_cuda_machine():
    assert placement.column("nf4", "cuda:0", True) == ("cuda:0", "nf4 · on GPU")
    assert placement.column("fp32", "cpu", True) == ("cpu", "fp32 · in RAM")
    assert placement.column("fp32", "cpu", False) == (None, None)


def test_on_cpu_the_schema_leaves_device_fields_null(tiny_source, cache):
    from quantplay.comparison import run_comparison
    from quantplay.streaming import GenerationSettings

    final = list(run_comparison(str(tiny_source.path), ["nf4"], "Hello", GenerationSettings(max_new_tokens=3),
                                cache=cache, device_map="cpu"))[-1].to_dict()
    assert [v["status"] for v in final["variants"]] == ["done", "done"]
    assert {(v["device"], v["placement"], v["cuda_peak_allocated_bytes"], v["device_total_bytes"])
            for v in final["variants"]} == {(None, None, None, None)}
