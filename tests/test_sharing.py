"""Identical requests share one generation (sharing.py): the shared answer is the lone run's."""

import threading

import pytest
from conftest import pace_forward

from quantplay import quality, sharing
from quantplay.comparison import run_comparison
from quantplay.presets import PRESETS
from quantplay.streaming import GenerationSettings, live_streams

SETTINGS = GenerationSettings(max_new_tokens=16)
VARIANTS = ["nf4"]  # with fp32: two generations per request


@pytest.fixture
def paced(tiny_source, cache, monkeypatch):
    """The tiny model at ~a real model's pace (30 ms a forward pass), so sessions overlap as they would."""
    pace_forward(type(cache.get(tiny_source, PRESETS["fp32"], "cpu")[0].model), 0.03, monkeypatch)


def _compare(tiny_source, cache, settings=SETTINGS, stop=None, on_frame=None):
    final = None
    for frame in run_comparison(str(tiny_source.path), VARIANTS, "Hello there", settings, cache=cache,
                                device_map="cpu", stop=stop):
        final = frame
        if on_frame:
            on_frame(frame)
    return final


def _sessions(n, target):
    results = [None] * n
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, target(i))) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results


def _columns(result):
    return [(v.name, v.status, v.token_ids, v.text, v.kl_divergence_mean, v.top1_agreement, v.perplexity)
            for v in result.variants]


def test_identical_sessions_read_one_generation_and_one_scoring(tiny_source, cache, paced, monkeypatch):
    alone = _compare(tiny_source, cache)
    scorings = []
    real_score = quality.score_variants
    monkeypatch.setattr(quality, "score_variants", lambda *a, **k: scorings.append(1) or real_score(*a, **k))
    before = sharing.SHARED.generations
    together = _sessions(4, lambda i: _compare(tiny_source, cache))
    assert all(result is not None and result.done for result in together)  # every session ended within 120 s
    assert [[(v.status, v.error) for v in result.variants] for result in together] == [[("done", None)] * 2] * 4, \
        [result.warnings for result in together]
    assert sharing.SHARED.generations - before == 2  # fp32 and nf4, once each for the four sessions
    assert len(scorings) == 1, [result.warnings for result in together]
    for result in together:
        assert _columns(result) == _columns(alone)  # token ids, texts and scores: the lone run's
        assert [v.batch_size for v in result.variants] == [4, 4]
        assert all(0 < v.session_ttft_seconds <= v.session_seconds for v in result.variants)
    assert [v.batch_size for v in alone.variants] == [1, 1]
    assert live_streams() == 0 and sharing.SHARED.running() == 0


def test_a_late_joiner_first_gets_the_tokens_so_far(tiny_source, cache, paced):
    alone = _compare(tiny_source, cache)
    before = sharing.SHARED.generations
    halfway = threading.Event()
    first = threading.Thread(target=lambda: results.append(_compare(
        tiny_source, cache, on_frame=lambda f: f.variants[0].new_tokens >= 4 and halfway.set())))
    results = []
    first.start()
    assert halfway.wait(60)
    late = _compare(tiny_source, cache)
    first.join(60)
    assert sharing.SHARED.generations - before == 2
    assert _columns(late) == _columns(results[0]) == _columns(alone)
    assert late.variants[0].batch_size == 2


def test_one_session_stopping_leaves_the_others_running(tiny_source, cache, paced):
    alone = _compare(tiny_source, cache)
    stop = threading.Event()

    def session(i):
        if i == 0:
            return _compare(tiny_source, cache, stop=stop,
                            on_frame=lambda f: f.variants[0].new_tokens >= 3 and stop.set())
        return _compare(tiny_source, cache)

    before = sharing.SHARED.generations
    stopped, *others = _sessions(3, session)
    assert sharing.SHARED.generations - before == 2  # the stopped session was reading the others' generations
    assert [v.status for v in stopped.variants] == ["stopped", "stopped"]
    assert all(v.new_tokens < SETTINGS.max_new_tokens for v in stopped.variants)
    for result in others:
        assert _columns(result) == _columns(alone)
    assert live_streams() == 0


def test_every_session_stopping_stops_the_generation(tiny_source, cache, paced):
    long = GenerationSettings(max_new_tokens=400)
    stops = [threading.Event() for _ in range(3)]
    before = sharing.SHARED.generations

    def session(i):
        return _compare(tiny_source, cache, long, stop=stops[i],
                        on_frame=lambda f: f.variants[0].new_tokens >= 3 + i and stops[i].set())

    results = _sessions(3, session)
    assert sharing.SHARED.generations - before == 2
    assert all(v.status == "stopped" and v.new_tokens < 400 for r in results for v in r.variants)
    assert live_streams() == 0 and sharing.SHARED.running() == 0


def test_different_seeds_do_not_share_and_the_same_seed_does(tiny_source, cache, paced):
    def sampled(seed):
        return GenerationSettings(max_new_tokens=8, do_sample=True, temperature=1.5, top_p=0.95, seed=seed)

    alone = _compare(tiny_source, cache, sampled(1))
    before = sharing.SHARED.generations
    results = _sessions(3, lambda i: _compare(tiny_source, cache, sampled(1 if i < 2 else 2)))
    assert sharing.SHARED.generations - before == 4  # seed 1 once, seed 2 once, two variants each
    assert _columns(results[0]) == _columns(results[1]) == _columns(alone)
    assert results[2].variants[0].token_ids != alone.variants[0].token_ids
