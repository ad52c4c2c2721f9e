import time

import pytest
import torch

from quantplay.presets import PRESETS
from quantplay.streaming import GenerationSettings, IncrementalDecoder, TokenStream, live_streams


@pytest.fixture
def fp32(cache, tiny_source):
    entry, _ = cache.get(tiny_source, PRESETS["fp32"], "cpu")
    return entry


def _prompt(entry, text="The capital of France is"):
    return torch.tensor([entry.tokenizer(text)["input_ids"]])


def _drain(stream):
    stream.join(60)
    events = []
    while not stream.events.empty():
        events.append(stream.events.get_nowait())
    return events


def test_streamed_tokens_equal_non_streamed_greedy_generate(fp32):
    ids = _prompt(fp32)
    stream = TokenStream(fp32.model, ids, GenerationSettings(max_new_tokens=20)).start()
    events = _drain(stream)
    assert events[-1][0] == "done"
    streamed = [payload for tag, _, payload in events if tag == "token"]
    reference = fp32.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=20, do_sample=False)
    assert streamed == reference[0, ids.shape[1]:].tolist()
    assert len(streamed) == 20
    decoder = IncrementalDecoder(fp32.tokenizer)
    pieces = "".join(decoder.add(t) for t in streamed)
    assert decoder.finish() == fp32.tokenizer.decode(streamed, skip_special_tokens=True)
    assert decoder.text.startswith(pieces)


def test_incremental_decoder_waits_for_split_characters(fp32):
    text = "東京は日本の首都です。 🙂 Il était"
    ids = fp32.tokenizer(text)["input_ids"]
    decoder = IncrementalDecoder(fp32.tokenizer)
    streamed = "".join(decoder.add(t) for t in ids)
    assert "\ufffd" not in streamed
    assert decoder.finish() == fp32.tokenizer.decode(ids, skip_special_tokens=True)
    assert streamed == decoder.text


def test_stop_flag_ends_generation_at_the_next_token(fp32):
    stream = TokenStream(fp32.model, _prompt(fp32), GenerationSettings(max_new_tokens=400))
    stream.start()
    while len(stream.result.token_ids) < 3:
        time.sleep(0.001)
    stream.stop()
    assert stream.join(10), "generation thread still running after stop"
    assert stream.result.stopped
    assert 3 <= len(stream.result.token_ids) < 400


def test_error_in_generate_surfaces_as_an_event(fp32):
    stream = TokenStream(fp32.model, torch.tensor([[10**6]]), GenerationSettings(max_new_tokens=5)).start()
    events = _drain(stream)
    assert events[-1][0] == "error"
    assert isinstance(events[-1][2], Exception)


def test_seeded_sampling_is_reproducible_and_independent_of_other_streams(fp32):
    settings = GenerationSettings(max_new_tokens=15, do_sample=True, temperature=1.5, top_p=0.95, seed=7)

    def run(n_parallel):
        streams = [TokenStream(fp32.model, _prompt(fp32), settings).start() for _ in range(n_parallel)]
        for s in streams:
            s.join(60)
        return [s.result.token_ids for s in streams]

    alone = run(1)[0]
    together = run(3)
    assert all(ids == alone for ids in together)
    greedy = TokenStream(fp32.model, _prompt(fp32), GenerationSettings(max_new_tokens=15)).start()
    greedy.join(60)
    other_seed = TokenStream(fp32.model, _prompt(fp32), GenerationSettings(
        max_new_tokens=15, do_sample=True, temperature=1.5, top_p=0.95, seed=8)).start()
    other_seed.join(60)
    assert alone != greedy.result.token_ids or alone != other_seed.result.token_ids


def test_interleaved_streams_take_turns_token_by_token(fp32):
    """Greenlets on the compute thread: while one stream waits its turn, the others advance."""
    streams = [TokenStream(fp32.model, _prompt(fp32), GenerationSettings(max_new_tokens=12), tag=i) for i in range(3)]
    order = []
    for s in streams:
        s._push_original = s._push

        def record(tag, payload, s=s):
            if tag == "token":
                order.append(s.tag)
            s._push_original(tag, payload)

        s._push = record
        s.start()
    assert all(s.join(60) for s in streams)
    assert live_streams() == 0
    assert sorted(order) == sorted([0, 1, 2] * 12)
    assert set(order[:6]) == {0, 1, 2}  # nobody finishes its 12 tokens before the others start


def test_threads_schedule_runs_each_stream_on_its_own_thread(fp32):
    import threading

    lock = threading.Lock()
    a = TokenStream(fp32.model, _prompt(fp32), GenerationSettings(max_new_tokens=5), schedule="threads", model_lock=lock)
    b = TokenStream(fp32.model, _prompt(fp32), GenerationSettings(max_new_tokens=5), schedule="threads", model_lock=lock)
    a.start(), b.start()
    assert a.join(60) and b.join(60)
    assert a.result.token_ids == b.result.token_ids and len(a.result.token_ids) == 5
    with pytest.raises(ValueError, match="schedule"):
        TokenStream(fp32.model, _prompt(fp32), GenerationSettings(), schedule="fastest")


@pytest.mark.parametrize("schedule", ["interleave", "threads"])
def test_generation_runs_in_inference_mode_and_leaves_the_compute_thread_as_it_found_it(fp32, schedule):
    """Inference mode is the speed-up measured in docs/benchmarks.md; greenlets must not leak it into jobs."""
    from quantplay.compute import COMPUTE

    streams = [TokenStream(fp32.model, _prompt(fp32), GenerationSettings(max_new_tokens=6), schedule=schedule,
                           tag=i).start() for i in range(2)]
    assert all(s.join(60) for s in streams)
    for s in streams:
        assert s.result.error is None and len(s.result.token_ids) == 6
        layer = s.result.past_key_values.layers[0]
        assert layer.keys.is_inference()  # made in inference mode, not merely under no_grad
    assert COMPUTE.call(torch.is_inference_mode_enabled) is False  # loads and jobs run outside it
    assert COMPUTE.call(torch.is_grad_enabled) is False
    assert torch.is_inference_mode_enabled() is False
