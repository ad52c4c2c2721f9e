import threading
import time

import pytest
import torch

from quantplay.presets import PRESETS
from quantplay.streaming import GenerationSettings, IncrementalDecoder, TokenStream, TurnTaker


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
        turns = TurnTaker()
        streams = [TokenStream(fp32.model, _prompt(fp32), settings, turns=turns).start() for _ in range(n_parallel)]
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


def test_turn_taker_hands_the_baton_round_robin():
    turns = TurnTaker()
    order = []

    def worker(name):
        turns.acquire(name)
        try:
            for _ in range(3):
                order.append(name)
                time.sleep(0.01)
                turns.pass_on(name)
        finally:
            turns.release(name)

    threads = [threading.Thread(target=worker, args=(n,)) for n in "abc"]
    for t in threads:
        t.start()
        time.sleep(0.003)
    for t in threads:
        t.join(10)
    assert sorted(order) == sorted("aaabbbccc")
    assert order[3:6] != ["a", "a", "a"]  # nobody runs three steps in a row while others wait
