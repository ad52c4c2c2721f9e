import dataclasses
import threading

import pytest
from conftest import pace_forward

from quantplay import config as qconfig
from quantplay.catalog import ModelUnavailable
from quantplay.comparison import run_comparison
from quantplay.config import Config, Limits
from quantplay.presets import PRESETS, PresetError
from quantplay.streaming import GenerationSettings, live_streams

SETTINGS = GenerationSettings(max_new_tokens=12)


def _run(tiny_source, cache, variants, **kw):
    return list(run_comparison(str(tiny_source.path), variants, kw.pop("prompt", "Hello there"),
                               kw.pop("settings", SETTINGS), cache=cache, device_map="cpu", **kw))


@pytest.fixture
def real_pace(tiny_source, cache, monkeypatch):
    """The tiny model at a real model's pace on this CPU (~40 ms a token), so frames can batch tokens."""
    pace_forward(type(cache.get(tiny_source, PRESETS["fp32"], "cpu")[0].model), 0.04, monkeypatch)


def test_frames_share_one_schema_and_fp32_comes_first(tiny_source, cache, real_pace):
    frames = _run(tiny_source, cache, ["nf4", "int8"])
    keys = {tuple(sorted(f.to_dict())) for f in frames}
    variant_keys = {tuple(sorted(v)) for f in frames for v in f.to_dict()["variants"]}
    assert len(keys) == 1 and len(variant_keys) == 1
    final = frames[-1].to_dict()
    assert final["done"] and not any(f.done for f in frames[:-1])
    assert [v["name"] for v in final["variants"]] == ["fp32", "nf4", "int8"]
    assert all(v["status"] == "done" and v["new_tokens"] == 12 for v in final["variants"])
    assert final["prompt_token_ids"][:1] == [3]  # <|im_start|>: the chat template was applied
    for v in final["variants"]:
        assert v["footprint_bytes"] > 0 and v["kv_cache_bytes"] > 0 and v["tokens_per_second"] > 0
        assert v["text"] and f"max_new_tokens={SETTINGS.max_new_tokens}" in v["code"]  # the column's own snippet
        assert ("BitsAndBytesConfig" in v["code"]) == (v["name"] != "fp32")  # quantized variants, and only they
    assert final["environment"]["threads"] >= 1 and final["memory"]["process_rss_peak_bytes"] > 0
    assert final["scoring_seconds"] > 0 and final["variants"][1]["kl_divergence_mean"] is not None
    assert all(f.scoring_seconds is None for f in frames[:-1])
    # columns fill together: some frame shows every variant part-way through
    assert any(all(0 < v.new_tokens < 12 for v in f.variants) for f in frames)


def test_fp32_alone_and_without_chat_template(tiny_source, cache):
    final = _run(tiny_source, cache, ["fp32"], settings=GenerationSettings(max_new_tokens=5, chat_template=False))[-1]
    assert [v.name for v in final.variants] == ["fp32"]
    assert final.prompt_token_ids[0] != 3
    assert final.variants[0].cache_hit is False
    again = _run(tiny_source, cache, [], custom={"load_in_4bit": True, "bnb_4bit_quant_type": "nf4"})[-1]
    assert [v.name for v in again.variants] == ["fp32", "custom"]
    assert again.variants[0].cache_hit is True


def test_same_tokens_as_the_variant_alone(tiny_source, cache):
    together = _run(tiny_source, cache, ["nf4"])[-1].variants
    alone = _run(tiny_source, cache, ["fp32"])[-1].variants
    assert together[0].token_ids == alone[0].token_ids


def test_a_failing_variant_marks_its_column_and_the_others_finish(tiny_source, cache, monkeypatch):
    entry, _ = cache.get(tiny_source, PRESETS["int8"], "cpu")
    real = entry.model.generate

    def broken(*args, **kwargs):
        raise RuntimeError("simulated kernel failure")

    monkeypatch.setattr(entry.model, "generate", broken)
    final = _run(tiny_source, cache, ["int8", "nf4"], custom={"load_in_4bit": True, "dtype": "float16"})[-1]
    status = {v.name: (v.status, v.error) for v in final.variants}
    assert status["fp32"] == ("done", None) and status["nf4"] == ("done", None)
    assert status["int8"] == ("error", "simulated kernel failure")
    assert status["custom"][0] == "error" and "not supported by bitsandbytes on CPU" in status["custom"][1]
    monkeypatch.setattr(entry.model, "generate", real)
    assert _run(tiny_source, cache, ["int8"])[-1].variants[1].status == "done"


def test_stop_event_stops_every_variant(tiny_source, cache):
    stop = threading.Event()
    frames = []
    for frame in run_comparison(str(tiny_source.path), ["nf4"], "Hi", GenerationSettings(max_new_tokens=400),
                                cache=cache, device_map="cpu", stop=stop):
        frames.append(frame)
        if any(v.new_tokens >= 3 for v in frame.variants):
            stop.set()
    final = frames[-1]
    assert final.done
    assert all(v.status == "stopped" and v.new_tokens < 400 for v in final.variants)
    assert live_streams() == 0


def test_closing_the_generator_ends_generation(tiny_source, cache):
    frames = run_comparison(str(tiny_source.path), ["nf4"], "Hi", GenerationSettings(max_new_tokens=400),
                            cache=cache, device_map="cpu")
    for frame in frames:
        if any(v.new_tokens >= 2 for v in frame.variants):
            break
    frames.close()  # what gradio does when a user presses Stop or disconnects
    assert live_streams() == 0


@pytest.mark.parametrize("kwargs, error, message", [
    ({"prompt": "   "}, ValueError, "prompt is empty"),
    ({"variants": ["int9"]}, PresetError, "Unknown preset"),
    ({"variants": []}, PresetError, "at least one"),
    ({"settings": GenerationSettings(max_new_tokens=0)}, ValueError, "at least 1"),
    ({"custom": {"load_in_8bit": True, "load_in_4bit": True}}, PresetError, "choose one"),
    ({"model": "../.."}, ModelUnavailable, "not a model id"),
])
def test_bad_requests_fail_before_any_work(tiny_source, cache, kwargs, error, message):
    args = {"model": str(tiny_source.path), "variants": ["nf4"], "prompt": "Hi", "settings": SETTINGS} | kwargs
    with pytest.raises(error, match=message):
        next(run_comparison(args.pop("model"), args.pop("variants"), args.pop("prompt"), args.pop("settings"),
                            cache=cache, **args))


def test_limits_cap_with_visible_warnings(tiny_source, cache):
    limits = Limits(max_new_tokens=4, max_prompt_tokens=8)
    final = list(run_comparison(str(tiny_source.path), ["fp32", "fp32"], "word " * 50 + "\x00end",
                                GenerationSettings(max_new_tokens=99), cache=cache, device_map="cpu",
                                limits=limits))[-1]
    assert final.variants[0].new_tokens == 4
    assert len(final.prompt_token_ids) == 8
    joined = " ".join(final.warnings)
    assert "capped at 4" in joined and "last 8" in joined and "control characters" in joined
    with pytest.raises(PresetError, match="limit is 2"):
        next(run_comparison(str(tiny_source.path), ["int8", "nf4"], "Hi", cache=cache, limits=Limits(max_variants=2)))


def test_limits_come_from_the_config_passed_down(tiny_source, cache):
    limits = Config.from_mapping({"QUANTPLAY_MAX_NEW_TOKENS": "3", "QUANTPLAY_MAX_VARIANTS": "2"}).limits
    config = dataclasses.replace(qconfig.current(), limits=limits)  # the test's model dirs, these limits
    final = list(run_comparison(str(tiny_source.path), ["fp32"], "Hi", GenerationSettings(max_new_tokens=9),
                                cache=cache, device_map="cpu", config=config))[-1]
    assert final.variants[0].new_tokens == 3 and "capped at 3" in " ".join(final.warnings)
    with pytest.raises(PresetError, match="limit is 2"):
        next(run_comparison(str(tiny_source.path), ["int8", "nf4"], "Hi", cache=cache, config=config))


def test_frames_batch_tokens_and_a_finished_stream_ends_the_wait(tiny_source, cache):
    """Tokens that arrive within a frame interval share one frame; the end of generation is shown at once."""
    import time

    _run(tiny_source, cache, ["fp32"])  # loaded
    start = time.perf_counter()
    frames = _run(tiny_source, cache, ["fp32"], settings=GenerationSettings(max_new_tokens=6), frame_seconds=5.0)
    # Had the end of generation not cut the wait short, the second frame alone would come 5 s after the first;
    # six tiny-model tokens take milliseconds, so all of the 5 s is margin for a loaded machine.
    assert time.perf_counter() - start < 5.0
    streaming = [f for f in frames if f.variants[0].new_tokens > 0]
    assert streaming[-1].done and streaming[-1].variants[0].new_tokens == 6
    assert len(streaming) <= 3  # the first token's frame, then the rest together (and the final frame)


def test_frame_seconds_sets_the_frame_rate_and_is_checked(tiny_source, cache, real_pace):
    slow = GenerationSettings(max_new_tokens=8)
    every = [f for f in _run(tiny_source, cache, ["fp32"], settings=slow, frame_seconds=0.05) if f.variants[0].new_tokens]
    batched = [f for f in _run(tiny_source, cache, ["fp32"], settings=slow, frame_seconds=1.0) if f.variants[0].new_tokens]
    assert len(batched) < len(every) and batched[-1].variants[0].new_tokens == 8
    for bad in (0, -1, 10.0, "fast", True):
        with pytest.raises(ValueError, match="frame_seconds must be"):
            _run(tiny_source, cache, ["fp32"], frame_seconds=bad)
