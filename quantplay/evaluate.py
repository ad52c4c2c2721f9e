"""`quantplay evaluate`: agreement with fp32 over many prompts, with error bars.

One prompt's KL says little: it moves a lot from prompt to prompt. This runs fp32
on every prompt (the shipped set, `data/eval_prompts.txt`, or one prompt per line of
a file), greedy, then has every variant read fp32's continuation teacher-forced,
through the comparison's own scoring (`quality.score_variants`, fp32's logits kept
from its generation). Per variant it reports what llama.cpp's
`perplexity --kl-divergence` reports for GGUF files: mean, median, p90, p99 and max
KL; RMS of Δp (the change in the probability of fp32's token); the same-top-token
rate; and the perplexity ratio to fp32. Each comes with a 95% interval from a
bootstrap over prompts (prompts are resampled, their tokens pooled), since tokens
of one prompt are not independent. fp32's continuations decode in batches where
that is exact (batching.py), so 30 prompts cost about 4 batched generations.

llama.cpp's published figures are given beside ours for scale (`REFERENCE_POINTS`):
a different model, and a different method — they score held-out text, while
quantplay scores fp32's own continuation, which fp32 finds likely, so its KL is lower.
"""

from __future__ import annotations

import csv
import io
import math
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import catalog, quality, sharing
from . import config as qconfig
from .comparison import MAX_KEPT_LOGITS_BYTES, place
from .compute import COMPUTE
from .config import Config
from .errors import QuantplayError
from .loaded import resolve_device
from .loader import ModelCache, default_cache
from .sampling import GenerationSettings
from .sharing import StreamGroup
from .tokens import encode_prompt
from .validate import clean_prompt, select_presets

RESAMPLES = 1000
MAX_PROMPTS = 200  # one request's share of a shared server: 200 prompts of 32 tokens take ~10 min here
STATISTICS = ("kl_mean", "kl_median", "kl_p90", "kl_p99", "kl_max", "rms_dp", "same_top", "ppl_ratio")
LABELS = {"kl_mean": "mean KL", "kl_median": "median KL", "kl_p90": "KL p90", "kl_p99": "KL p99", "kl_max": "max KL",
          "rms_dp": "RMS Δp", "same_top": "same top token", "ppl_ratio": "PPL ratio"}
REFERENCE_POINTS = [  # llama.cpp's perplexity --kl-divergence, Llama-3-8B against FP16 on wikitext
    {"quant": "Q8_0", "kl_mean": 0.0014, "same_top": 0.977},
    {"quant": "Q4_K_M", "kl_mean": 0.031, "same_top": 0.919},
]
REFERENCE_NOTE = ("llama.cpp's published figures for scale: Llama-3-8B against FP16 on wikitext (a different model, "
                  "and a different method: held-out text, where quantplay scores fp32's own continuation, which "
                  "gives lower KL).")


def shipped_prompts() -> list[str]:
    return read_prompts(resources.files("quantplay").joinpath("data/eval_prompts.txt").read_text(encoding="utf-8"))


def read_prompts(text: str) -> list[str]:
    """One prompt per line; blank lines are skipped."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def prompts_from_file(path: str | Path) -> list[str]:
    try:
        prompts = read_prompts(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise QuantplayError(f"Cannot read the prompts file {str(path)!r}: {exc}") from None
    if not prompts:
        raise QuantplayError(f"The prompts file {str(path)!r} has no prompts (one per line).")
    return prompts


@dataclass
class PromptScores:
    """One prompt, one variant: per token of fp32's continuation."""

    kl: np.ndarray
    dp: np.ndarray  # the variant's probability of fp32's token minus fp32's own
    same: np.ndarray  # the variant's top token is fp32's
    nll_delta: np.ndarray  # -log p_variant(token) + log p_fp32(token)


def statistics(scores: Sequence[PromptScores]) -> dict[str, float]:
    """Every statistic over the pooled tokens of `scores`."""
    kl = np.concatenate([s.kl for s in scores])
    dp = np.concatenate([s.dp for s in scores])
    return {"kl_mean": float(kl.mean()), "kl_median": float(np.median(kl)), "kl_p90": float(np.percentile(kl, 90)),
            "kl_p99": float(np.percentile(kl, 99)), "kl_max": float(kl.max()),
            "rms_dp": float(math.sqrt(float((dp ** 2).mean()))),
            "same_top": float(np.concatenate([s.same for s in scores]).mean()),
            "ppl_ratio": float(math.exp(float(np.concatenate([s.nll_delta for s in scores]).mean())))}


def bootstrap(scores: Sequence[PromptScores], resamples: int = RESAMPLES, seed: int = 0) -> dict[str, dict[str, float]]:
    """Each statistic with a 95% percentile interval from resampling prompts with replacement."""
    point = statistics(scores)
    rng = np.random.default_rng(seed)
    draws = [statistics([scores[i] for i in rng.integers(0, len(scores), len(scores))]) for _ in range(resamples)]
    out = {}
    for key in STATISTICS:
        values = np.array([d[key] for d in draws])
        low, high = np.percentile(values, [2.5, 97.5]) if len(scores) > 1 else (point[key], point[key])
        out[key] = {"value": point[key], "low": float(low), "high": float(high)}
    return out


def overlaps(a: dict[str, float], b: dict[str, float]) -> bool:
    return a["low"] <= b["high"] and b["low"] <= a["high"]


def _scores(reference: quality.Agreement, variant: quality.Agreement) -> PromptScores:
    ref_p = np.array([t.reference_prob for t in reference.tokens])
    p = np.array([t.reference_prob for t in variant.tokens])
    tiny = 1e-30
    return PromptScores(kl=np.array([t.kl for t in variant.tokens]), dp=p - ref_p,
                        same=np.array([t.agree for t in variant.tokens], dtype=float),
                        nll_delta=np.log(np.maximum(ref_p, tiny)) - np.log(np.maximum(p, tiny)))


def run_evaluation(model: str, variants: Sequence[str], prompts: Sequence[str] | None = None, *,
                   max_new_tokens: int = 32, cache: ModelCache | None = None, stop: threading.Event | None = None,
                   progress: Callable[[float, str], None] | None = None, resamples: int = RESAMPLES,
                   config: Config | None = None) -> dict[str, Any]:
    """fp32's greedy continuation of every prompt, read teacher-forced by every variant; the report (module doc)."""
    started = time.perf_counter()
    config = config or qconfig.current()
    limits = config.limits
    say = progress or (lambda fraction, message: None)
    prompts = list(shipped_prompts() if prompts is None else prompts)
    if not prompts:
        raise QuantplayError("No prompts to evaluate.")
    if len(prompts) > MAX_PROMPTS:
        raise QuantplayError(f"{len(prompts)} prompts; the limit is {MAX_PROMPTS} per evaluation.")
    if not 1 <= max_new_tokens <= limits.max_new_tokens:
        raise QuantplayError(f"max_new_tokens must be from 1 to {limits.max_new_tokens}, not {max_new_tokens}.")
    cleaned = [clean_prompt(p, limits)[0] for p in prompts]
    presets, _ = select_presets(list(variants), None, limits)
    if len(presets) < 2:
        raise QuantplayError("Name at least one variant to evaluate against fp32, e.g. --variants int8,nf4.")
    source = catalog.resolve(model, config=config)
    cache = cache or default_cache()
    places = place(cache, source, presets, "auto", torch.cuda.is_available())  # as a comparison would
    cache.check_fits([(source, p, resolve_device(where.device_map)) for p, where in zip(presets, places)])
    settings = GenerationSettings(max_new_tokens=max_new_tokens)
    with ExitStack() as leases:
        entries = []
        for i, (preset, where) in enumerate(zip(presets, places)):
            say(0.2 * i / len(presets), f"loading {preset.name}…")
            entries.append(leases.enter_context(cache.lease(source, preset, where.device_map))[0])
        tok = entries[0].tokenizer
        ids = [encode_prompt(tok, p, settings.chat_template, limits.max_prompt_tokens)[0] for p in cleaned]
        continuations = _continue(entries[0], ids, settings, stop, say)
        per_variant: dict[str, list[PromptScores]] = {p.name: [] for p in presets[1:]}
        tokens = 0
        for i, (prompt_ids, (cont, logits)) in enumerate(zip(ids, continuations)):
            if stop is not None and stop.is_set():
                break
            if not cont:
                continue
            say(0.6 + 0.4 * i / len(ids), f"scoring prompt {i + 1} of {len(ids)}…")
            own = [quality.OwnRun(logits, None, cont)] + [None] * (len(entries) - 1)
            agreements = COMPUTE.call(quality.score_variants, [e.model for e in entries], prompt_ids + cont,
                                      len(prompt_ids), decode=str, own=own)
            tokens += len(cont)
            for preset, agreement in zip(presets[1:], agreements[1:]):
                per_variant[preset.name].append(_scores(agreements[0], agreement))
    scored = len(next(iter(per_variant.values())))
    if not scored:
        raise QuantplayError("Stopped before any prompt was scored." if stop is not None and stop.is_set()
                             else "fp32 generated no tokens for any prompt.")
    say(1.0, "done")
    results = {name: bootstrap(scores, resamples) for name, scores in per_variant.items()}
    return {"model": source.name, "variants": [p.name for p in presets[1:]], "prompts": len(prompts),
            "prompts_scored": scored, "tokens": tokens, "max_new_tokens": max_new_tokens, "resamples": resamples,
            "stopped": bool(stop is not None and stop.is_set()), "seconds": round(time.perf_counter() - started, 2),
            "results": results, "kl_values": {n: np.concatenate([s.kl for s in v]).round(6).tolist()
                                              for n, v in per_variant.items()},
            "notes": interval_notes(results), "reference_points": REFERENCE_POINTS, "reference_note": REFERENCE_NOTE}


def _continue(entry, ids: list[list[int]], settings: GenerationSettings, stop: threading.Event | None,
              say: Callable[[float, str], None]) -> list[tuple[list[int], torch.Tensor | None]]:
    """fp32's greedy continuation of every prompt, with its logits (scoring reuses them); batched where exact."""
    tok = entry.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    vocab = getattr(entry.model.config, "vocab_size", 0)
    keep = len(ids) * settings.max_new_tokens * vocab * 4 <= MAX_KEPT_LOGITS_BYTES  # else scoring runs full passes
    done = 0
    with StreamGroup() as group:
        listeners = [group.add(entry.model, torch.tensor([row], dtype=torch.long), settings, registry=sharing.SHARED,
                               pad_token_id=pad, keep_logits=keep, tag=f"evaluate-{i}") for i, row in enumerate(ids)]
        for batch in group.frames(0.5, stop):
            done += sum(tag in ("done", "error") for tag, _, _ in batch)
            say(0.2 + 0.4 * done / len(ids), f"fp32 continued {done} of {len(ids)} prompts…")
            for tag, _, payload in batch:
                if tag == "error":
                    raise QuantplayError(f"fp32 failed while generating: {payload}")
    return [(list(x.result.token_ids), x.result.logits) for x in listeners]


def interval_notes(results: dict[str, dict[str, dict[str, float]]]) -> list[str]:
    """Which variants' mean-KL intervals overlap (then their order is not established by these prompts)."""
    names = sorted(results, key=lambda n: results[n]["kl_mean"]["value"])
    notes = []
    for a, b in zip(names, names[1:]):
        word = "overlap" if overlaps(results[a]["kl_mean"], results[b]["kl_mean"]) else "do not overlap"
        notes.append(f"The mean-KL intervals of {a} and {b} {word}.")
    return notes


def to_csv(report: dict[str, Any]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["variant", "statistic", "value", "low_95", "high_95"])
    for name, stats in report["results"].items():
        for key in STATISTICS:
            s = stats[key]
            writer.writerow([name, key, f"{s['value']:.6g}", f"{s['low']:.6g}", f"{s['high']:.6g}"])
    return out.getvalue()


def _cell(s: dict[str, float], percent: bool = False) -> str:
    if percent:
        return f"{s['value']:.1%} [{s['low']:.1%}, {s['high']:.1%}]"
    return f"{s['value']:.4f} [{s['low']:.4f}, {s['high']:.4f}]"


def table_rows(report: dict[str, Any]) -> list[list[str]]:
    """One row per variant: each statistic as 'value [low, high]' (the page's table and the CLI's)."""
    return [[name] + [_cell(stats[k], percent=k == "same_top") for k in STATISTICS]
            for name, stats in report["results"].items()]


def to_text(report: dict[str, Any]) -> str:
    head = ["variant"] + [LABELS[k] for k in STATISTICS]
    rows = table_rows(report)
    lines = [f"{report['model']}: {report['prompts_scored']} prompts, {report['tokens']} tokens of fp32's continuation "
             f"({report['max_new_tokens']} new tokens at most each), 95% intervals from {report['resamples']} "
             f"bootstrap resamples over prompts; {report['seconds']:.0f} s.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += [""] + report["notes"] + ["", REFERENCE_NOTE]
    lines += [f"  {p['quant']}: mean KL {p['kl_mean']}, same top token {p['same_top']:.1%}"
              for p in REFERENCE_POINTS]
    return "\n".join(lines)
