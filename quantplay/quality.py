"""Agreement with fp32, teacher-forced: how far a variant's next-token distribution moves.

Every variant reads the same token sequence (the prompt plus fp32's continuation,
or a reference text) in one forward pass; the distributions at each position are
compared with fp32's, as llama.cpp's `perplexity --kl-divergence` does for GGUF
files. The pure functions take logits; `score_variants` runs the forward passes.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

TOP_K = 3  # alternatives shown per token


@dataclass
class TokenScore:
    """One position of the reference continuation, seen by fp32 and by a variant."""

    token_id: int
    text: str
    kl: float  # KL(P_fp32 || P_variant), nats
    reference_prob: float  # probability the variant gives fp32's token
    agree: bool  # the variant's argmax equals fp32's
    fp32_top: list[tuple[str, float]] = field(default_factory=list)
    variant_top: list[tuple[str, float]] = field(default_factory=list)


@dataclass
class Agreement:
    kl_divergence_mean: float
    kl_divergence_max: float
    top1_agreement: float
    reference_token_prob_mean: float
    perplexity: float
    tokens: list[TokenScore] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        return {"kl_divergence_mean": self.kl_divergence_mean, "kl_divergence_max": self.kl_divergence_max,
                "top1_agreement": self.top1_agreement, "reference_token_prob_mean": self.reference_token_prob_mean,
                "perplexity": self.perplexity}


@dataclass
class Distribution:
    """Next-token distributions at each position, worked out once: fp32's serves every variant."""

    logp: torch.Tensor  # [positions, vocab] log-probabilities
    p: torch.Tensor  # their exp
    argmax: torch.Tensor
    top_values: torch.Tensor  # [positions, TOP_K] probabilities, most likely first
    top_indices: torch.Tensor

    @classmethod
    def of(cls, logits: torch.Tensor) -> Distribution:
        logp = torch.log_softmax(logits.float(), dim=-1)
        top = logp.topk(min(TOP_K, logp.shape[-1]), dim=-1)
        return cls(logp, logp.exp(), top.indices[:, 0], top.values.exp(), top.indices)


def agreement(ref_logits: torch.Tensor | Distribution, logits: torch.Tensor | Distribution, targets: torch.Tensor,
              decode: Callable[[int], str] | None = None) -> Agreement:
    """Compare a variant's logits with fp32's at the positions that predict `targets` (fp32's tokens)."""
    ref = ref_logits if isinstance(ref_logits, Distribution) else Distribution.of(ref_logits)
    var = logits if isinstance(logits, Distribution) else Distribution.of(logits)
    kl = (ref.p * (ref.logp - var.logp)).sum(dim=-1).clamp_min(0.0)  # KL(P_ref || P), nats
    agree = var.argmax == ref.argmax
    target_logp = var.logp.gather(-1, targets[:, None]).squeeze(-1)
    target_probs = target_logp.exp()
    tokens = []
    if decode is not None:
        kls, probs, agrees = kl.tolist(), target_probs.tolist(), agree.tolist()
        ref_top = list(zip(ref.top_indices.tolist(), ref.top_values.tolist()))
        top = list(zip(var.top_indices.tolist(), var.top_values.tolist()))
        for i, token in enumerate(targets.tolist()):
            tokens.append(TokenScore(
                token, decode(token), kls[i], probs[i], agrees[i],
                [(decode(t), p) for t, p in zip(*ref_top[i])], [(decode(t), p) for t, p in zip(*top[i])]))
    return Agreement(
        kl_divergence_mean=float(kl.mean()), kl_divergence_max=float(kl.max()),
        top1_agreement=float(agree.float().mean()), reference_token_prob_mean=float(target_probs.mean()),
        perplexity=math.exp(float(-target_logp.mean())), tokens=tokens)


def first_divergence(reference: Sequence[int], variant: Sequence[int]) -> int | None:
    """Index of the first generated token where `variant` departs from `reference`.

    A shorter output departs where it ends; None if they never depart.
    """
    for i, (a, b) in enumerate(zip(reference, variant)):
        if a != b:
            return i
    if len(reference) != len(variant):
        return min(len(reference), len(variant))
    return None


@torch.inference_mode()
def sequence_logits(model, ids: Sequence[int], start: int) -> torch.Tensor:
    """Logits at positions start-1 … len-2: the predictions of ids[start:]. One forward pass."""
    input_ids = torch.tensor([list(ids)], dtype=torch.long, device=model.device)
    logits = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids)).logits[0]
    return logits[start - 1:-1].float().cpu()


@dataclass
class OwnRun:
    """What a variant's own generation left: its logits per step, its KV cache, its tokens."""

    logits: torch.Tensor | None = None
    cache: Any = None
    token_ids: Sequence[int] = ()


@torch.inference_mode()
def teacher_forced_logits(model, ids: Sequence[int], start: int, own: OwnRun | None = None) -> torch.Tensor:
    """The model's predictions of ids[start:], reusing its own generation where it can.

    Up to the first token where its free-running output departed from ids[start:], the
    prefixes are the same, so its own generation logits are exactly the teacher-forced ones;
    after it, its KV cache is cropped to the shared prefix and only the rest is fed.
    A variant that never departed costs no forward pass at all.
    """
    n = len(ids) - start
    if own is not None and own.logits is not None:
        d = first_divergence(list(ids[start:]), list(own.token_ids))
        d = n if d is None else d
        if d >= n and own.logits.shape[0] >= n:
            return own.logits[:n]
        if own.cache is not None and own.logits.shape[0] >= d:
            try:
                shared = start + d - 1  # positions whose keys/values both sequences share
                own.cache.crop(shared)
                feed = torch.tensor([list(ids[shared:-1])], dtype=torch.long, device=model.device)
                mask = torch.ones((1, len(ids) - 1), dtype=torch.long, device=model.device)
                out = model(input_ids=feed, past_key_values=own.cache, attention_mask=mask, use_cache=True)
                return torch.cat([own.logits[:d], out.logits[0].float().cpu()])
            except Exception:  # a cache that cannot be cropped: fall back to the full pass
                pass
    return sequence_logits(model, ids, start)


def score_variants(models: Sequence[Any], ids: Sequence[int], start: int,
                   decode: Callable[[int], str] | None = None,
                   own: Sequence[OwnRun | None] | None = None) -> list[Agreement]:
    """Teacher-forced agreement of every model with models[0] (fp32) on ids[start:].

    `own[i]`, when given, is what model i's generation left (see `teacher_forced_logits`):
    fp32's own logits are its teacher-forced predictions of its own continuation.
    """
    if start < 1 or start >= len(ids):
        raise ValueError("Nothing to score: the sequence needs at least one token after the first.")
    own = list(own) if own is not None else [None] * len(models)
    targets = torch.tensor(list(ids[start:]), dtype=torch.long)
    if decode is not None:  # the same few hundred token ids recur across variants: decode each once
        decode = functools.cache(decode)
    ref = Distribution.of(teacher_forced_logits(models[0], ids, start, own[0]))
    results = [agreement(ref, ref, targets, decode)]
    for model, run in zip(models[1:], own[1:]):
        results.append(agreement(ref, teacher_forced_logits(model, ids, start, run), targets, decode))
    return results


def plain_reading(name: str, a: Agreement) -> str:
    """One sentence for a classroom."""
    return (f"{name} agrees with fp32 on {a.top1_agreement:.0%} of next-token choices; on average it gives "
            f"fp32's token {a.reference_token_prob_mean:.0%} probability (KL {a.kl_divergence_mean:.3f} nats).")
