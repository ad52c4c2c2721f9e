"""The one result schema the CLI (`--json`), the API (`/compare`) and the page share.

`ComparisonResult` is every streamed frame and the final result; `VariantResult` is one
column. Both are plain dataclasses with `to_dict()`; `comparison.run_comparison` fills them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .errors import QuantplayError


@dataclass
class VariantResult:
    name: str
    status: str = "loading"  # loading | generating | done | stopped | error
    error: str | None = None
    warnings: list[str] = field(default_factory=list)
    message: str = "waiting to load…"
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    new_tokens: int = 0
    footprint_bytes: int | None = None
    footprint_hf_bytes: int | None = None
    kv_cache_bytes: int | None = None
    # On a CUDA machine: where the variant's weights live ("cuda:0" or "cpu") and the column's words for it
    # (comparison.place: "fp32 · in RAM: does not fit in 24 GiB VRAM"), and that device's total and free
    # memory once it loaded. On the GPU, cuda_peak_allocated_bytes is its weights plus the most VRAM its own
    # generation held at once (metrics.VramTurns; null on the "threads" schedule). All null on a CPU-only machine.
    device: str | None = None
    placement: str | None = None
    cuda_peak_allocated_bytes: int | None = None
    device_total_bytes: int | None = None
    device_free_bytes: int | None = None
    load_seconds: float | None = None
    loaded_from: str | None = None  # "checkpoint" (quantized on load) or "disk cache" (prequantized)
    cache_hit: bool | None = None
    ttft_seconds: float | None = None
    tokens_per_second: float | None = None
    # this session's wall time from its request to its first token / to its end (waiting, loading and sharing
    # included), and the sessions that read the same generation (1: it ran for this session alone)
    session_ttft_seconds: float | None = None
    session_seconds: float | None = None
    batch_size: int = 1
    settings: dict[str, Any] = field(default_factory=dict)
    code: str = ""
    # agreement with fp32, teacher-forced on fp32's continuation (see quality.py); fp32 has its perplexity
    kl_divergence_mean: float | None = None
    kl_divergence_max: float | None = None
    top1_agreement: float | None = None
    reference_token_prob_mean: float | None = None
    perplexity: float | None = None
    first_divergence_token: int | None = None
    reading: str = ""
    token_scores: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class ComparisonResult:
    model: str
    prompt: str
    prompt_token_ids: list[int] = field(default_factory=list)
    done: bool = False
    settings: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    environment: dict[str, Any] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)
    scoring_seconds: float | None = None  # the agreement metrics' share of the wall time, once scored
    weights: dict[str, Any] = field(default_factory=dict)  # final frame only: per variant, weights.final_report
    variants: list[VariantResult] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def variant(self, name: str) -> VariantResult:
        """One column by preset name (`result.variant("int8").text`); a missing one names those present."""
        for row in self.variants:
            if row.name == name:
                return row
        raise QuantplayError(f"No variant {name!r} in this result; it has {', '.join(v.name for v in self.variants)}.")

    def snapshot(self) -> ComparisonResult:
        return dataclasses.replace(
            self, prompt_token_ids=list(self.prompt_token_ids), warnings=list(self.warnings),
            memory=dict(self.memory),
            variants=[dataclasses.replace(v, token_ids=list(v.token_ids), warnings=list(v.warnings))
                      for v in self.variants])
