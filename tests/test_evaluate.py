"""`quantplay evaluate` (evaluate.py): statistics over many prompts with bootstrap intervals."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
import torch

from quantplay import evaluate, quality
from quantplay.__main__ import EXIT_OK, EXIT_REFUSED, build_parser, run
from quantplay.compute import COMPUTE
from quantplay.presets import PRESETS
from quantplay.tokens import encode_prompt

PROMPTS = ["Hello there", "The capital of France is", "One two three", "Write a poem about the sea"]


def _prompt(kl, same=1.0):
    kl = np.array(kl, dtype=float)
    return evaluate.PromptScores(kl=kl, dp=-kl / 10, same=np.full(len(kl), same), nll_delta=kl / 2)


def test_the_bootstrap_interval_holds_the_value_and_collapses_when_prompts_agree():
    varied = [_prompt([0.1, 0.2]), _prompt([0.5, 0.9]), _prompt([0.05]), _prompt([0.3, 0.3, 0.4], same=0.0)]
    stats = evaluate.bootstrap(varied, resamples=500, seed=1)
    assert set(stats) == set(evaluate.STATISTICS)
    for key, s in stats.items():
        assert s["low"] <= s["value"] <= s["high"], key
    assert stats["kl_mean"]["low"] < stats["kl_mean"]["high"]
    assert stats["kl_mean"]["value"] == pytest.approx(np.mean([0.1, 0.2, 0.5, 0.9, 0.05, 0.3, 0.3, 0.4]))
    assert stats["rms_dp"]["value"] == pytest.approx(np.sqrt(np.mean((np.array([.1, .2, .5, .9, .05, .3, .3, .4]) / 10) ** 2)))
    assert stats["same_top"]["value"] == pytest.approx(5 / 8)
    assert stats == evaluate.bootstrap(varied, resamples=500, seed=1)  # a fixed seed: the same intervals
    same = evaluate.bootstrap([_prompt([0.2, 0.2])] * 5, resamples=200)
    assert same["kl_mean"]["low"] == pytest.approx(same["kl_mean"]["high"]) == pytest.approx(0.2)


def test_overlap_notes_say_which_intervals_overlap():
    results = {"a": {"kl_mean": {"value": 0.1, "low": 0.05, "high": 0.15}},
               "b": {"kl_mean": {"value": 0.2, "low": 0.14, "high": 0.3}},
               "c": {"kl_mean": {"value": 0.9, "low": 0.8, "high": 1.0}}}
    assert evaluate.interval_notes(results) == ["The mean-KL intervals of a and b overlap.",
                                                "The mean-KL intervals of b and c do not overlap."]


def test_too_many_prompts_or_none_are_refused_before_anything_loads():
    from quantplay.errors import QuantplayError

    with pytest.raises(QuantplayError, match=f"the limit is {evaluate.MAX_PROMPTS} per evaluation"):
        evaluate.run_evaluation("no/such-model", ["fp32", "nf4"], ["hi"] * (evaluate.MAX_PROMPTS + 1))
    with pytest.raises(QuantplayError, match="No prompts"):
        evaluate.run_evaluation("no/such-model", ["fp32", "nf4"], [])


def test_shipped_prompts_are_about_thirty_and_varied():
    prompts = evaluate.shipped_prompts()
    assert 25 <= len(prompts) <= 40 and len(set(prompts)) == len(prompts)
    assert evaluate.read_prompts("a\n\n  b  \n") == ["a", "b"]


def test_evaluation_matches_an_independent_recomputation(tiny_source, cache):
    report = evaluate.run_evaluation(str(tiny_source.path), ["fp32", "nf4"], PROMPTS, max_new_tokens=6,
                                     cache=cache, resamples=100)
    assert report["variants"] == ["nf4"] and report["prompts_scored"] == 4
    s = report["results"]["nf4"]
    assert s["kl_median"]["value"] <= s["kl_p90"]["value"] <= s["kl_p99"]["value"] <= s["kl_max"]["value"]
    assert 0 <= s["same_top"]["value"] <= 1 and s["ppl_ratio"]["value"] > 0
    assert len(report["kl_values"]["nf4"]) == report["tokens"]
    # the same figures from two plain forward passes per prompt, on fp32's continuation
    fp32 = cache.get(tiny_source, PRESETS["fp32"], "cpu")[0]
    nf4 = cache.get(tiny_source, PRESETS["nf4"], "cpu")[0]
    kls, dps = [], []
    for prompt in PROMPTS:
        ids = encode_prompt(fp32.tokenizer, prompt, True, 512)[0]
        x = torch.tensor([ids])
        out = COMPUTE.call(fp32.model.generate, x, attention_mask=torch.ones_like(x), max_new_tokens=6, do_sample=False,
                           pad_token_id=fp32.tokenizer.eos_token_id)[0].tolist()
        ref = torch.log_softmax(COMPUTE.call(quality.sequence_logits, fp32.model, out, len(ids)), -1)
        var = torch.log_softmax(COMPUTE.call(quality.sequence_logits, nf4.model, out, len(ids)), -1)
        kls += (ref.exp() * (ref - var)).sum(-1).clamp_min(0).tolist()
        target = torch.tensor(out[len(ids):])[:, None]
        dps += (var.gather(-1, target).exp() - ref.gather(-1, target).exp()).squeeze(-1).tolist()
    assert s["kl_mean"]["value"] == pytest.approx(np.mean(kls), rel=1e-3, abs=1e-6)
    assert s["kl_max"]["value"] == pytest.approx(max(kls), rel=1e-3, abs=1e-6)
    assert s["rms_dp"]["value"] == pytest.approx(np.sqrt(np.mean(np.square(dps))), rel=1e-3, abs=1e-6)


def test_the_command_writes_csv_json_and_refuses_an_empty_prompt_file(tiny_source, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS[:3]) + "\n")
    base = ["evaluate", "--model", str(tiny_source.path), "--variants", "nf4,fp4", "--prompts", str(prompts),
            "--max-new-tokens", "4", "--resamples", "50"]
    assert run(build_parser().parse_args(base + ["--csv"])) == EXIT_OK
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 2 * len(evaluate.STATISTICS) and {r["variant"] for r in rows} == {"nf4", "fp4"}
    assert all(float(r["low_95"]) <= float(r["value"]) <= float(r["high_95"]) for r in rows)
    assert run(build_parser().parse_args(base + ["--json"])) == EXIT_OK
    report = json.loads(capsys.readouterr().out)
    assert report["reference_points"] == evaluate.REFERENCE_POINTS and len(report["notes"]) == 1
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    assert run(build_parser().parse_args(["evaluate", "--model", str(tiny_source.path), "--prompts", str(empty)])) \
        == EXIT_REFUSED
    assert "has no prompts" in capsys.readouterr().err


@pytest.mark.slow
def test_the_shipped_set_orders_int8_nf4_fp4_with_intervals(bundled_cache):
    from quantplay import catalog

    report = evaluate.run_evaluation(catalog.BUNDLED_NAME, ["fp32", "int8", "nf4", "fp4"], max_new_tokens=16,
                                     cache=bundled_cache)
    mean = {name: report["results"][name]["kl_mean"] for name in ("int8", "nf4", "fp4")}
    assert mean["int8"]["value"] < mean["nf4"]["value"] < mean["fp4"]["value"], mean
    assert report["prompts_scored"] == len(evaluate.shipped_prompts())
    assert all(m["low"] < m["value"] < m["high"] for m in mean.values())
    assert len(report["notes"]) == 2  # whether each neighbouring pair's intervals overlap, said in words
