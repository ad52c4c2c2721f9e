import threading
import time

import pytest
import torch

from quantplay.presets import PRESETS
from quantplay.sharing import StreamGroup
from quantplay.streaming import GenerationSettings, TokenStream, live_streams
from quantplay.tokens import IncrementalDecoder, encode_prompt


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
    assert alone != greedy.result.token_ids  # it samples rather than decoding greedily
    assert alone != other_seed.result.token_ids  # and the seed decides what it samples


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


@pytest.mark.parametrize("temperature", [None, 0, 0.0])
def test_from_request_reads_no_temperature_as_greedy(temperature):
    settings = GenerationSettings.from_request(max_new_tokens=9, temperature=temperature, top_p=1.0, seed=4,
                                               chat_template=False)
    assert not settings.do_sample
    assert (settings.max_new_tokens, settings.seed, settings.chat_template, settings.top_p) == (9, 4, False, 1.0)


def test_from_request_samples_above_zero_with_the_given_top_p():
    settings = GenerationSettings.from_request(temperature=0.3, top_p=0.8, seed=2)
    assert settings.do_sample and (settings.temperature, settings.top_p, settings.seed) == (0.3, 0.8, 2)
    assert GenerationSettings.from_request() == GenerationSettings.from_request(64, 0.0, 1.0, 0, True)
    assert not GenerationSettings.from_request().do_sample  # the CLI's and the API's shared default: greedy
    for bad in (-0.5, "hot", True):
        with pytest.raises(ValueError, match="temperature must be"):
            GenerationSettings.from_request(temperature=bad)


def test_encode_prompt_applies_the_template_and_keeps_a_long_prompts_end(fp32):
    tok = fp32.tokenizer
    templated, warnings = encode_prompt(tok, "Hi", True, 512)
    assert templated[0] == 3 and warnings == []  # <|im_start|>
    plain, _ = encode_prompt(tok, "Hi", False, 512)
    assert plain == list(tok("Hi")["input_ids"])
    full, _ = encode_prompt(tok, "word " * 40, False, 10_000)
    kept, warnings = encode_prompt(tok, "word " * 40, False, 8)
    assert kept == full[-8:] and "only its last 8" in warnings[0]


def test_stream_group_merges_streams_into_frames_and_ends_with_each_one(fp32):
    with StreamGroup() as group:
        streams = [group.add(fp32.model, _prompt(fp32), GenerationSettings(max_new_tokens=n), tag=n) for n in (3, 7)]
        batches = list(group.frames(frame_seconds=0.05))
    events = [event for batch in batches for event in batch]
    for stream, n in zip(streams, (3, 7)):
        own = [(tag, payload) for tag, s, payload in events if s is stream]
        assert [tag for tag, _ in own] == ["token"] * n + ["done"]
        assert [payload for tag, payload in own if tag == "token"] == stream.result.token_ids
    assert all(batches) and live_streams() == 0


def test_a_stream_that_ends_cuts_the_frame_pause_short(fp32):
    with StreamGroup() as group:
        stream = group.add(fp32.model, _prompt(fp32), GenerationSettings(max_new_tokens=4))
        start = time.perf_counter()
        batches = list(group.frames(frame_seconds=30.0))
    # the first token's frame comes at once; the rest would wait out 30 s had the end not woken the reader
    assert time.perf_counter() - start < 25  # four tiny-model tokens take milliseconds: the rest is margin
    assert batches[-1][-1][0] == "done" and len(stream.result.token_ids) == 4


def test_stream_group_stop_ends_every_stream_at_the_next_frame(fp32):
    stop = threading.Event()
    with StreamGroup() as group:
        streams = [group.add(fp32.model, _prompt(fp32), GenerationSettings(max_new_tokens=400), tag=i)
                   for i in range(2)]
        for _ in group.frames(frame_seconds=0.05, stop=stop):
            stop.set()
    assert all(s.result.stopped and len(s.result.token_ids) < 400 for s in streams)
    assert live_streams() == 0


def test_leaving_a_stream_group_early_stops_and_joins_its_streams(fp32):
    with StreamGroup() as group:
        group.add(fp32.model, _prompt(fp32), GenerationSettings(max_new_tokens=400))
        for _ in group.frames(frame_seconds=0.05):
            break  # what closing a comparison does
    assert live_streams() == 0
    start = time.perf_counter()
    with StreamGroup() as unstarted:  # e.g. an error between add() and frames(): no stream ran, none to wait for
        unstarted.add(fp32.model, _prompt(fp32), GenerationSettings(max_new_tokens=5))
    assert time.perf_counter() - start < 25  # waiting on a stream that never started would take JOIN_SECONDS (30)


def test_a_late_listener_gets_the_tokens_so_far_and_a_leaving_one_its_own_done(fp32):
    import queue

    stream = TokenStream(fp32.model, _prompt(fp32), GenerationSettings(max_new_tokens=400))
    first = stream.listen(queue.Queue())
    stream.start()
    while len(stream.result.token_ids) < 3:
        time.sleep(0.001)
    late = stream.listen(queue.Queue())
    first.stop()  # leaves: the stream runs on for `late`
    while len(stream.result.token_ids) < 8:
        time.sleep(0.001)
    assert not stream.stop_event.is_set() and first.left and first.stopped
    late.stop()  # the last listener: the stream stops
    assert stream.join(10) and stream.result.stopped

    def tokens(listener):
        events = []
        while not listener.events.empty():
            events.append(listener.events.get_nowait())
        assert [tag for tag, _, _ in events].count("done") == 1 and events[-1][0] == "done"
        return [payload for tag, _, payload in events if tag == "token"]

    assert tokens(late) == stream.result.token_ids  # the replayed tokens, then the live ones, in order
    left_with = tokens(first)
    assert 3 <= len(left_with) < len(stream.result.token_ids) and left_with == stream.result.token_ids[:len(left_with)]
    assert stream.listeners_total == 2 and live_streams() == 0
