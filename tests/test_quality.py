import math

import pytest
import torch

from quantplay import quality
from quantplay.comparison import run_comparison
from quantplay.presets import PRESETS
from quantplay.reference import score_text
from quantplay.streaming import GenerationSettings


def test_metrics_match_a_direct_computation():
    torch.manual_seed(0)
    ref, var = torch.randn(6, 11), torch.randn(6, 11)
    targets = torch.tensor([1, 4, 4, 0, 10, 3])
    a = quality.agreement(ref, var, targets)
    p, q = torch.softmax(ref, -1), torch.softmax(var, -1)
    p, q = p.double().tolist(), q.double().tolist()
    targets_list = targets.tolist()
    kl = [sum(p[i][j] * math.log(p[i][j] / q[i][j]) for j in range(11)) for i in range(6)]
    assert a.kl_divergence_mean == pytest.approx(sum(kl) / 6, rel=1e-4)
    assert a.kl_divergence_max == pytest.approx(max(kl), rel=1e-4)
    agree = [int(p[i].index(max(p[i])) == q[i].index(max(q[i]))) for i in range(6)]
    assert a.top1_agreement == pytest.approx(sum(agree) / 6)
    assert a.reference_token_prob_mean == pytest.approx(sum(q[i][t] for i, t in enumerate(targets_list)) / 6, rel=1e-5)
    nll = -sum(math.log(q[i][t]) for i, t in enumerate(targets_list)) / 6
    assert a.perplexity == pytest.approx(math.exp(nll), rel=1e-4)


def test_a_model_against_itself_agrees_completely():
    logits = torch.randn(5, 40)
    a = quality.agreement(logits, logits.clone(), torch.tensor([0, 1, 2, 3, 4]))
    assert a.kl_divergence_mean == pytest.approx(0.0, abs=1e-6) and a.top1_agreement == 1.0


@pytest.mark.parametrize("ref, var, expected", [
    ([1, 2, 3], [1, 2, 3], None), ([1, 2, 3], [1, 9, 3], 1), ([1, 2, 3], [1, 2], 2), ([1, 2], [1, 2, 3], 2),
    ([5], [6], 0), ([], [], None),
])
def test_first_divergence(ref, var, expected):
    assert quality.first_divergence(ref, var) == expected


def test_comparison_carries_agreement_metrics(tiny_source, cache):
    final = list(run_comparison(str(tiny_source.path), ["fp32", "nf4", "fp4"], "Hello", GenerationSettings(max_new_tokens=10),
                                cache=cache, device_map="cpu"))[-1]
    fp32, nf4, fp4 = final.variants
    assert fp32.perplexity > 0 and fp32.kl_divergence_mean is None
    assert len(fp32.token_scores) == 10 and all(t["kl"] == pytest.approx(0, abs=1e-5) for t in fp32.token_scores)
    for v in (nf4, fp4):
        assert v.kl_divergence_mean is not None and 0 <= v.top1_agreement <= 1
        assert v.kl_divergence_max >= v.kl_divergence_mean >= 0
        assert v.first_divergence_token == quality.first_divergence(fp32.token_ids, v.token_ids)
        assert v.reading.startswith(f"{v.name} agrees with fp32 on ")
        assert len(v.token_scores) == 10 and len(v.token_scores[0]["fp32_top"]) == quality.TOP_K
    # the teacher-forced scores are the real model's: recompute nf4's directly
    entry, _ = cache.get(tiny_source, PRESETS["nf4"], "cpu")
    ref_entry, _ = cache.get(tiny_source, PRESETS["fp32"], "cpu")
    ids = final.prompt_token_ids + fp32.token_ids
    start = len(final.prompt_token_ids)
    direct = quality.agreement(quality.sequence_logits(ref_entry.model, ids, start),
                               quality.sequence_logits(entry.model, ids, start), torch.tensor(fp32.token_ids))
    assert nf4.kl_divergence_mean == pytest.approx(direct.kl_divergence_mean, rel=1e-4)


def test_reference_text_mode(tiny_source, cache):
    result = score_text(str(tiny_source.path), ["int8"], "The capital of Italy is Rome. Quantization stores weights.",
                        cache=cache, device_map="cpu")
    fp32, int8 = result.variants
    assert result.tokens > 5 and [v.name for v in result.variants] == ["fp32", "int8"]
    assert fp32.kl_divergence_mean == pytest.approx(0, abs=1e-5) and fp32.top1_agreement == 1.0
    assert int8.perplexity > 1 and int8.kl_divergence_mean >= 0 and int8.error is None
    data = result.to_dict()  # the schema the page and --json callers share
    assert data["tokens"] == result.tokens and data["variants"][1]["perplexity"] == int8.perplexity
    with pytest.raises(ValueError, match="empty"):
        score_text(str(tiny_source.path), ["int8"], "  ", cache=cache, device_map="cpu")


def test_the_pages_reference_tab_renders_the_score_result(tiny_source, cache, monkeypatch):
    from quantplay import ui_insight

    monkeypatch.setattr(ui_insight, "score_text", lambda *a, **k: score_text(*a, cache=cache, device_map="cpu", **k))
    note, rows = ui_insight.on_score_text(str(tiny_source.path), ["nf4"], "The capital of Italy is Rome.")
    assert [r[0] for r in rows] == ["fp32", "nf4"] and rows[0][4] == "100%"
    assert note.startswith("Scored ") and "tokens of the text" in note


def test_reusing_the_variants_own_generation_gives_the_teacher_forced_logits(tiny_source, cache):
    """Own logits up to the first departure, then the cropped KV cache: same numbers as a full forward pass."""
    from quantplay.streaming import TokenStream

    fp32, _ = cache.get(tiny_source, PRESETS["fp32"], "cpu")
    prompt = fp32.tokenizer("The capital of Italy is")["input_ids"]
    checked = set()
    for name in ("nf4", "fp4", "fp32"):
        entry, _ = cache.get(tiny_source, PRESETS[name], "cpu")
        ref = TokenStream(fp32.model, torch.tensor([prompt]), GenerationSettings(max_new_tokens=16)).start()
        own = TokenStream(entry.model, torch.tensor([prompt]), GenerationSettings(max_new_tokens=16),
                          keep_logits=True).start()
        assert ref.join(60) and own.join(60)
        ids = prompt + ref.result.token_ids
        run = quality.OwnRun(own.result.logits, own.result.past_key_values, own.result.token_ids)
        checked.add(quality.first_divergence(ref.result.token_ids, own.result.token_ids))
        reused = quality.teacher_forced_logits(entry.model, ids, len(prompt), run)
        full = quality.sequence_logits(entry.model, ids, len(prompt))
        assert reused.shape == full.shape
        torch.testing.assert_close(reused, full, atol=2e-3, rtol=1e-3)
    assert None in checked and len(checked) >= 2  # fp32 never departs from itself; a 4-bit variant does
