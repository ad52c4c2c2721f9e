"""What only a CUDA GPU can show: the threads schedule, VRAM figures against torch's own
counters (weights at load, each variant's peak while interleaved), nf4 with bf16 compute,
the fp32 reference placed in RAM by the plan, streamed == generate.

Skipped without CUDA (the reason says so); `make gpu-check` runs them. No gradio needed.
A small random Llama (hidden 512, 4 layers, ~40 MB in fp32) keeps them under a minute
while its weights dominate the CUDA allocator's rounding, so 10% ratios are meaningful.
"""

import gc

import pytest
import torch
from tiny import build_tiny_model

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

from quantplay.comparison import run_comparison  # noqa: E402
from quantplay.compute import COMPUTE  # noqa: E402
from quantplay.presets import PRESETS, QuantPreset  # noqa: E402
from quantplay.streaming import GenerationSettings, TokenStream  # noqa: E402

GPU = "cuda:0"


@pytest.fixture(scope="module")
def small_source(models_root):
    from quantplay import catalog

    return catalog.resolve(str(build_tiny_model(models_root / "small-llama", hidden=512, layers=4)))


def _free(cache) -> None:
    cache.unload()
    gc.collect()
    torch.cuda.empty_cache()


def _prompt(entry, text="The capital of France is"):
    return torch.tensor([entry.tokenizer(text)["input_ids"]])


def _stream(entry, ids, new_tokens=12):
    stream = TokenStream(entry.model, ids, GenerationSettings(max_new_tokens=new_tokens)).start()
    assert stream.join(120), "generation did not finish"
    assert stream.result.error is None, stream.result.error
    return stream.result.token_ids


def test_threads_schedule_runs_every_variant_on_cuda(small_source, cache):
    frames = list(run_comparison(str(small_source.path), ["int8", "nf4"], "Hello there",
                                 GenerationSettings(max_new_tokens=8), cache=cache, device_map=GPU,
                                 schedule="threads"))
    final = frames[-1]
    assert final.done and [v.name for v in final.variants] == ["fp32", "int8", "nf4"]
    assert [(v.status, v.new_tokens) for v in final.variants] == [("done", 8)] * 3, [v.error for v in final.variants]
    assert final.memory["cuda_allocated_bytes"] > 0 and final.memory["device_total_bytes"] > 0
    assert final.variants[1].kl_divergence_mean is not None  # scored against fp32 on the GPU
    assert [(v.device, v.placement) for v in final.variants] == [(GPU, f"{n} · on GPU") for n in ("fp32", "int8", "nf4")]
    # overlapping threads share the device's peak counter: no variant's peak can be told apart
    assert all(v.cuda_peak_allocated_bytes is None and v.device_total_bytes > v.device_free_bytes > 0
               for v in final.variants)


def _lone_generation_peak(entry, ids, settings, pad):
    """The device counter around one bare generate on the compute thread, with the kwargs a stream passes."""
    kwargs = TokenStream(entry.model, ids, settings, pad_token_id=pad, keep_logits=True)._generate_kwargs()

    def measure():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        with torch.inference_mode():
            out = entry.model.generate(**kwargs)
        peak = torch.cuda.max_memory_allocated() - before
        del out
        return peak

    return COMPUTE.call(measure)


def test_each_variant_reports_its_own_vram_peak_when_interleaved(small_source, cache):
    """The default schedule: a variant's peak less its weights is what its generation held at most, within
    10% of the device counter around the same generation alone, whatever the variant beside it held."""
    settings = GenerationSettings(max_new_tokens=32)

    def compare():
        return list(run_comparison(str(small_source.path), ["nf4"], "The capital of France is", settings,
                                   cache=cache, device_map=GPU))[-1]

    compare()  # warm-up: what a thread makes once on its first matmul (cuBLAS workspace) is not a variant's
    final = compare()
    assert [(v.status, v.device, v.new_tokens) for v in final.variants] == [("done", GPU, 32)] * 2
    for v in final.variants:
        entry, _ = cache.get(small_source, PRESETS[v.name], GPU)
        tok = entry.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        lone = _lone_generation_peak(entry, torch.tensor([final.prompt_token_ids]), settings, pad)
        assert v.cuda_peak_allocated_bytes - v.footprint_bytes == pytest.approx(lone, rel=0.10), v.name
        assert v.device_total_bytes > v.device_free_bytes > 0


@pytest.mark.parametrize("name", ["fp32", "int8", "nf4"])
def test_footprint_and_estimate_within_10_percent_of_allocated(small_source, cache, name):
    _free(cache)
    before = torch.cuda.memory_allocated()
    entry, _ = cache.get(small_source, PRESETS[name], GPU)
    delta = torch.cuda.memory_allocated() - before
    assert next(entry.model.parameters()).device.type == "cuda"
    assert entry.footprint_bytes == pytest.approx(delta, rel=0.10)
    assert cache.estimate(small_source, PRESETS[name], GPU)[0] == pytest.approx(delta, rel=0.10)


def test_nf4_with_bf16_compute_loads_and_generates(small_source, cache):
    from bitsandbytes.nn import Linear4bit

    preset = QuantPreset("nf4-bf16", load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype="bfloat16")
    entry, _ = cache.get(small_source, preset, GPU)
    layers = [m for m in entry.model.modules() if isinstance(m, Linear4bit)]
    assert layers and {m.compute_dtype for m in layers} == {torch.bfloat16}
    assert len(_stream(entry, _prompt(entry))) == 12


def test_fp32_goes_to_ram_when_the_vram_budget_is_small(small_source):
    """A request on the default device_map: the plan over the cache's budgets puts fp32 in RAM, nf4 on the GPU;
    both generate, and nf4 is scored against the fp32 reference across the two devices."""
    from quantplay.loader import ModelCache

    nf4 = ModelCache(budget_bytes=8 * 2**30).estimate(small_source, PRESETS["nf4"], GPU)[0]
    cache = ModelCache(budgets={"cpu": 8 * 2**30, "cuda": 2 * nf4})  # room for nf4, not for fp32 (~7× larger)
    try:
        final = list(run_comparison(str(small_source.path), ["nf4"], "Hello there",
                                    GenerationSettings(max_new_tokens=12), cache=cache))[-1]
        fp32, quantized = final.variants
        assert [(v.status, v.new_tokens) for v in final.variants] == [("done", 12)] * 2, [v.error for v in final.variants]
        assert (fp32.device, quantized.device) == ("cpu", GPU)
        assert fp32.placement.startswith("fp32 · in RAM: does not fit in") and quantized.placement == "nf4 · on GPU"
        entries = {e["preset"]: e["device"] for e in cache.entries()}
        assert entries == {"fp32": "cpu", "nf4": GPU}
        assert fp32.cuda_peak_allocated_bytes is None and quantized.cuda_peak_allocated_bytes > quantized.footprint_bytes
        assert quantized.kl_divergence_mean is not None
    finally:
        _free(cache)


@pytest.mark.parametrize("name", ["fp32", "nf4"])
def test_streamed_equals_non_streamed_greedy_on_cuda(small_source, cache, name):
    entry, _ = cache.get(small_source, PRESETS[name], GPU)
    ids = _prompt(entry)
    streamed = _stream(entry, ids, 20)
    on_device = ids.to(entry.model.device)
    reference = entry.model.generate(on_device, attention_mask=torch.ones_like(on_device), max_new_tokens=20,
                                     do_sample=False)
    assert streamed == reference[0, ids.shape[1]:].tolist()
