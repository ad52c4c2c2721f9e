"""Per-layer weight error and LLM.int8 outlier counts (weights.py), on the tiny random model.

Each figure is checked against an independent computation: the checkpoint layer quantized with
bitsandbytes directly, and inputs collected by a hook of the test's own."""

from __future__ import annotations

import json

import bitsandbytes as bnb
import pytest
import torch
from safetensors import safe_open

from quantplay import diskcache, weights
from quantplay.__main__ import build_parser, run
from quantplay.comparison import run_comparison
from quantplay.loader import ModelCache
from quantplay.presets import QuantPreset, get_preset
from quantplay.streaming import GenerationSettings

SETTINGS = GenerationSettings(max_new_tokens=6)


def checkpoint(tiny_dir) -> dict[str, torch.Tensor]:
    with safe_open(str(tiny_dir / "model.safetensors"), framework="pt") as f:
        return {key: f.get_tensor(key) for key in f.keys()}


def direct(w: torch.Tensor, like) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(Ŵ, packed 4-bit codes or None) from bitsandbytes called directly, as transformers would quantize `w`."""
    if isinstance(like, bnb.nn.Linear8bitLt):
        cb, scb, _ = bnb.functional.int8_vectorwise_quant(w.half())
        return cb.float() * scb.float().unsqueeze(1) / 127, None
    qs = like.weight.quant_state
    packed, state = bnb.functional.quantize_4bit(w.to(qs.dtype), blocksize=qs.blocksize, quant_type=qs.quant_type,
                                                 compress_statistics=qs.nested)
    return bnb.functional.dequantize_4bit(packed, state).float(), packed


@pytest.mark.parametrize("variant", ["int8", "nf4", "fp4", "nf4-dq"])
def test_layer_errors_agree_with_bitsandbytes_directly(variant, tiny_source, tiny_dir, cache):
    entry, _ = cache.get(tiny_source, get_preset(variant), "cpu")
    report = entry.layer_errors
    modules = dict(weights.quantized_linears(entry.model))
    originals = checkpoint(tiny_dir)
    assert [r.name for r in report.layers] == list(modules) and len(modules) == 2 * 7, report.notes
    for row in report.layers:
        w = originals[row.name + ".weight"].float()
        w_hat, packed = direct(w, modules[row.name])
        assert row.relative_error == pytest.approx(float((w_hat - w).norm() / w.norm()), rel=1e-5)
        assert row.max_abs_error == pytest.approx(float((w_hat - w).abs().max()), rel=1e-5)
        if packed is None:
            assert row.bits == 8 and row.code_shares is None
        else:
            codes = torch.cat([packed.reshape(-1) >> 4, packed.reshape(-1) & 15]).long()
            expected = torch.bincount(codes, minlength=16).double() / codes.numel()
            assert row.bits == 4 and row.code_shares == pytest.approx(expected.tolist(), abs=1e-12)
    assert report.layers[0].layer == 0 and report.layers[0].module == "self_attn.q_proj"
    assert 0 < weights.mean_relative_error(report.layers) < 0.5


def test_a_prequantized_load_from_the_disk_cache_gives_the_same_errors(tiny_source, configure, tmp_path,
                                                                       monkeypatch):
    configure(cache_dir=tmp_path)
    nf4 = get_preset("nf4")
    caches = [ModelCache(budget_bytes=2**30) for _ in range(3)]
    fresh, _ = caches[0].get(tiny_source, nf4, "cpu")
    errors = [r.relative_error for r in fresh.layer_errors.layers]
    key = diskcache.entry_key(tiny_source, nf4, "cpu")
    note = diskcache.entry_dir(key) / weights.NOTE
    assert note.is_file()  # kept beside the entry the first load wrote
    with monkeypatch.context() as m:  # the second load reads the note: nothing is worked out again
        m.setattr(weights, "at_load", lambda *a: pytest.fail("recomputed instead of reading the note"))
        noted, _ = caches[1].get(tiny_source, nf4, "cpu")
    assert noted.loaded_from == "disk cache"
    assert [r.relative_error for r in noted.layer_errors.layers] == pytest.approx(errors, rel=1e-6)
    note.unlink()  # without the note, the prequantized tensors themselves give the same figures
    cached, _ = caches[2].get(tiny_source, nf4, "cpu")
    assert cached.loaded_from == "disk cache" and note.is_file()
    assert [r.relative_error for r in cached.layer_errors.layers] == pytest.approx(errors, rel=1e-6)
    for cache in caches:
        cache.unload()


def test_fp32_has_no_weight_report(tiny_source, cache):
    entry, _ = cache.get(tiny_source, get_preset("fp32"), "cpu")
    assert entry.layer_errors is None


def collected_inputs(model) -> tuple[dict[str, list[torch.Tensor]], list]:
    """The test's own hook: every input each Linear8bitLt receives."""
    seen: dict[str, list[torch.Tensor]] = {}
    handles = []
    for name, module in weights.quantized_linears(model):
        seen[name] = []
        handles.append(module.register_forward_pre_hook(lambda m, args, name=name: seen[name].append(args[0].clone())))
    return seen, handles


def outliers_of(tiny_source, cache, threshold: float) -> tuple[list, list, object]:
    """(the comparison's frames, the direct count per layer, the model) for a custom int8 variant at `threshold`."""
    custom = {"load_in_8bit": True, "llm_int8_threshold": threshold}
    entry, _ = cache.get(tiny_source, QuantPreset.from_fields("custom", custom), "cpu")
    seen, handles = collected_inputs(entry.model)
    try:
        frames = list(run_comparison(tiny_source.path, [], "Hello there", SETTINGS, custom=custom, device_map="cpu",
                                     cache=cache))
    finally:
        for handle in handles:
            handle.remove()
    # the generation's forward passes: the prefill, then one a token but the last; the scoring's come after
    passes = frames[-1].variant("custom").new_tokens
    for inputs in seen.values():
        assert inputs[0].shape[1] == len(frames[-1].prompt_token_ids) and all(x.shape[1] == 1 for x in inputs[1:passes])
    counts = [int(torch.cat([x.reshape(-1, x.shape[-1]) for x in inputs[:passes]]).half().abs().ge(threshold)
                  .any(0).sum()) for inputs in seen.values()]
    return frames, counts, entry.model


def test_outlier_counts_agree_with_a_direct_count_and_fall_with_the_threshold(tiny_source, cache):
    frames, direct_low, model = outliers_of(tiny_source, cache, 1.0)
    counted = frames[-1].weights["custom"]["outliers"]
    assert [row["outlier_columns"] for row in counted] == direct_low
    assert all(row["threshold"] == 1.0 for row in counted) and counted[0]["in_features"] == 64
    assert 0 < sum(direct_low) < sum(row["in_features"] for row in counted)  # some columns, not all
    assert all(not m._forward_pre_hooks for _, m in weights.quantized_linears(model))  # hooks only while streaming
    frames_high, direct_high, _ = outliers_of(tiny_source, cache, 6.0)
    high = [row["outlier_columns"] for row in frames_high[-1].weights["custom"]["outliers"]]
    assert high == direct_high and sum(direct_low) > sum(high)


def test_only_the_final_frame_has_the_weights(tiny_dir, cache):
    frames = list(run_comparison(str(tiny_dir), ["int8", "nf4"], "Hello", SETTINGS, device_map="cpu", cache=cache))
    assert frames[-1].done and all(not f.weights for f in frames[:-1])
    final = frames[-1].to_dict()["weights"]
    assert set(final) == {"int8", "nf4"}  # fp32 quantized nothing
    assert len(final["nf4"]["layers"]) == 14 and len(final["nf4"]["layers"][0]["code_shares"]) == 16
    assert "outliers" in final["int8"] and "outliers" not in final["nf4"]
    assert final["nf4"]["worst"][0].startswith("layer ") and "relative error" in final["nf4"]["worst"][0]


def test_inspect_prints_json_csv_and_the_worst_layers_in_words(tiny_dir, capsys):
    assert run(build_parser().parse_args(["inspect", "--model", str(tiny_dir), "--variant", "nf4", "--json",
                                          "--device-map", "cpu"])) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["variant"], len(data["layers"])) == ("nf4", 14)
    assert sum(data["layers"][0]["code_shares"]) == pytest.approx(1.0)
    assert run(build_parser().parse_args(["inspect", "--model", str(tiny_dir), "--variant", "int8", "--csv",
                                          "--device-map", "cpu"])) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[0] == "layer,module,bits,relative_error,max_abs_error" and len(rows) == 15
    assert run(build_parser().parse_args(["inspect", "--model", str(tiny_dir), "--device-map", "cpu"])) == 0
    text = capsys.readouterr().out.splitlines()
    assert sum(line.startswith("worst: layer ") for line in text) == 5 and "relative error" in text[1]


def test_inspect_refuses_fp32(tiny_dir, capsys):
    assert run(build_parser().parse_args(["inspect", "--model", str(tiny_dir), "--variant", "fp32"])) == 2
    assert "not quantized" in capsys.readouterr().err
