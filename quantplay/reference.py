"""Reference-text mode: every variant's perplexity, and its KL from fp32, over a text a person gives.

It shares the comparison's checks and loading (`comparison.prepare_request`, `comparison.lease_all`)
and the agreement maths (`quality.score_variants`); it generates nothing, so it has its own schema.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

from . import config as qconfig
from . import quality
from .comparison import VariantResult, lease_all, prepare_request
from .compute import COMPUTE
from .config import Config, Limits
from .errors import QuantplayError
from .loader import ModelCache


@dataclass
class ScoredVariant:
    """One variant over a given text: its perplexity and its agreement with fp32 (None where it failed)."""

    name: str
    error: str | None = None
    kl_divergence_mean: float | None = None
    kl_divergence_max: float | None = None
    top1_agreement: float | None = None
    reference_token_prob_mean: float | None = None
    perplexity: float | None = None


@dataclass
class ScoreResult:
    """What `score_text` returns: the page and any caller share this schema, as with ComparisonResult."""

    model: str
    tokens: int  # positions scored (the text's tokens after the first)
    warnings: list[str] = field(default_factory=list)
    variants: list[ScoredVariant] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def score_text(model: str, variants: Sequence[str] | str | None, text: str, *, custom: dict | None = None,
               device_map: str = "auto", cache: ModelCache | None = None, limits: Limits | None = None,
               config: Config | None = None) -> ScoreResult:
    """Reference-text mode: every variant's perplexity, and its KL from fp32, over a given text."""
    limits = limits or (config or qconfig.current()).limits
    text, warnings, presets, places, source, cache = prepare_request(model, variants, text, custom, device_map, cache, limits,
                                                         config=config)
    rows = [VariantResult(p.name) for p in presets]
    with ExitStack() as leases:
        loaded = lease_all(cache, source, presets, rows, places, leases, None)
        if rows[0].status == "error":
            raise QuantplayError(rows[0].error)  # no fp32 reference, nothing to compare with
        ids = list(loaded[0][1].tokenizer(text)["input_ids"])
        limit = 4 * limits.max_prompt_tokens
        if len(ids) > limit:
            warnings.append(f"The text is {len(ids)} tokens; only its first {limit} are scored.")
            ids = ids[:limit]
        if len(ids) < 2:
            raise QuantplayError("The text needs at least two tokens to score.")
        scores = COMPUTE.call(quality.score_variants, [entry.model for _, entry in loaded], ids, 1)
    summaries = {row.name: agreement.summary() for (row, _), agreement in zip(loaded, scores)}
    return ScoreResult(model=source.name, tokens=len(ids) - 1, warnings=warnings,
                       variants=[ScoredVariant(row.name, row.error, **summaries.get(row.name, {})) for row in rows])
