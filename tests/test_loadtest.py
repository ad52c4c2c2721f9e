"""`quantplay loadtest`: its figures from fake sessions, and a real run against the launched app."""

import json
import time

import pytest

from quantplay import loadtest
from quantplay.__main__ import build_parser, run


class FakeClient:
    """Streams two frames per request: a first token, then the final result (or a failed column)."""

    active = 0  # requests in flight across every fake client
    most_active = 0

    def __init__(self, fail=False):
        self.fail = fail

    def submit(self, model, variants, prompt, max_new_tokens, api_name):
        assert api_name == "/compare"
        FakeClient.active += 1
        FakeClient.most_active = max(FakeClient.most_active, FakeClient.active)
        time.sleep(0.05)
        FakeClient.active -= 1
        yield {"done": False, "variants": [{"name": v, "status": "generating", "new_tokens": 1} for v in variants]}
        status = "error" if self.fail else "done"
        yield {"done": True, "variants": [{"name": v, "status": status, "error": None, "new_tokens": max_new_tokens,
                                           "batch_size": 3} for v in variants]}


def test_the_report_counts_tokens_failures_and_percentiles():
    clients = iter([FakeClient(), FakeClient(), FakeClient(fail=True)])
    figures = loadtest.run_loadtest("http://x", 3, same_prompt=True, variants=["fp32", "nf4"], max_new_tokens=5,
                                    client_factory=lambda url: next(clients))
    assert figures["completed"] == 2 and figures["tokens"] == 2 * 2 * 5
    assert figures["failures"] == ["RuntimeError: fp32: error; nf4: error"]
    assert figures["batch_sizes"] == [3]
    assert figures["ttft_seconds"]["p50"] <= figures["finish_seconds"]["max"]
    assert loadtest.percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.0
    assert loadtest.percentile([4.0, 1.0, 3.0, 2.0], 95) == 4.0 and loadtest.percentile([], 50) is None


def test_one_by_one_runs_the_same_sessions_each_alone():
    FakeClient.most_active = 0
    figures = loadtest.run_loadtest("http://x", 3, variants=["fp32"], max_new_tokens=5, one_by_one=True,
                                    client_factory=lambda url: FakeClient())
    assert figures["completed"] == 3 and figures["one_by_one"] and FakeClient.most_active == 1
    assert figures["wall_seconds"] >= 3 * 0.05
    FakeClient.most_active = 0
    together = loadtest.run_loadtest("http://x", 3, variants=["fp32"], max_new_tokens=5,
                                     client_factory=lambda url: FakeClient())
    assert FakeClient.most_active == 3 and not together["one_by_one"]


def test_prompts_are_the_same_or_all_different():
    assert set(loadtest.prompts_for(4, same_prompt=True)) == {loadtest.PROMPTS[0]}
    different = loadtest.prompts_for(30, same_prompt=False)
    assert len(set(different)) == 30


@pytest.mark.api
@pytest.mark.slow
def test_three_sessions_against_the_launched_app(app_url, capsys):
    args = build_parser().parse_args(["loadtest", "--sessions", "3", "--url", app_url, "--same-prompt",
                                      "--variants", "fp32", "--max-new-tokens", "8"])
    assert run(args) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["completed"] == 3 and figures["failures"] == []
    assert 3 <= figures["tokens"] <= 3 * 8 and figures["aggregate_tokens_per_second"] > 0
    assert 0 < figures["ttft_seconds"]["p50"] <= figures["finish_seconds"]["p95"]
    assert all(1 <= size <= 3 for size in figures["batch_sizes"])
