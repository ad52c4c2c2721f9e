"""run_comparison(): the one generator the CLI, the API and the page all call.

It validates a request, loads every variant through the cache, streams all of
them at once and yields `ComparisonResult` frames; every frame has the shape
of the final result. It knows nothing about gradio or the terminal.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import torch

from . import catalog, metrics, quality
from .catalog import ModelSource
from .compute import COMPUTE
from .loader import LoadedModel, ModelCache, check_causal_lm, default_cache, resolve_device
from .presets import QuantPreset
from .streaming import SCHEDULES, GenerationSettings, IncrementalDecoder, TokenStream
from .validate import Limits, check_frame_seconds, check_settings, clean_prompt, encode_prompt, select_presets

JOIN_SECONDS = 30.0
MAX_KEPT_LOGITS_BYTES = 256 * 2**20
FRAME_SECONDS = 0.1  # at most 10 frames a second by default: tokens that arrive faster share a frame
# (each frame costs the server and its client CPU that the generation would otherwise have; see README)


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
    load_seconds: float | None = None
    loaded_from: str | None = None  # "checkpoint" (quantized on load) or "disk cache" (prequantized)
    cache_hit: bool | None = None
    ttft_seconds: float | None = None
    tokens_per_second: float | None = None
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
    variants: list[VariantResult] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def snapshot(self) -> ComparisonResult:
        return dataclasses.replace(
            self, prompt_token_ids=list(self.prompt_token_ids), warnings=list(self.warnings),
            memory=dict(self.memory),
            variants=[dataclasses.replace(v, token_ids=list(v.token_ids), warnings=list(v.warnings))
                      for v in self.variants])


# -- validation ----------------------------------------------------------------
def _error_text(exc: BaseException) -> str:
    if isinstance(exc, (ValueError, RuntimeError, OSError)) and str(exc):
        return str(exc).splitlines()[0][:500]
    return f"{type(exc).__name__}: {str(exc)[:300]}"


# -- the comparison --------------------------------------------------------------
def run_comparison(
    model: str,
    variants: Sequence[str] | str | None,
    prompt: str,
    settings: GenerationSettings = GenerationSettings(),
    *,
    custom: dict | None = None,
    device_map: str = "auto",
    cache: ModelCache | None = None,
    stop: threading.Event | None = None,
    progress: Callable[[float, str], None] | None = None,
    schedule: str | None = None,
    limits: Limits | None = None,
    frame_seconds: float | None = None,
) -> Iterator[ComparisonResult]:
    """Yield frames while every variant loads and streams; the last has done=True.

    Raises ValueError (PresetError, ModelUnavailable, …) before the first frame
    for a request that cannot run. Errors in one variant mark only its column.
    While tokens stream, frames come at most once per `frame_seconds` (default FRAME_SECONDS).
    """
    limits = limits or Limits.from_env()
    settings, setting_warnings = check_settings(settings, limits)
    frame_seconds = check_frame_seconds(FRAME_SECONDS if frame_seconds is None else frame_seconds)
    prompt, warnings, presets, device, source, cache = _prepare(model, variants, prompt, custom, device_map, cache,
                                                                limits, progress)
    schedule = schedule or ("threads" if device.startswith("cuda") else "interleave")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}.")

    result = ComparisonResult(
        model=source.name, prompt=prompt, settings=dataclasses.asdict(settings),
        warnings=warnings + setting_warnings,
        environment=metrics.environment(device),
        variants=[VariantResult(p.name, settings=p.to_dict(), code=_code(p, source, device, device_map, prompt, settings))
                  for p in presets])
    result.memory = metrics.memory_snapshot(device)
    yield result.snapshot()

    with ExitStack() as leases:
        for row in result.variants:
            row.message = "loading…"
        yield result.snapshot()
        loaded = _lease_all(cache, source, presets, result.variants, device_map, leases, progress)
        result.memory = metrics.memory_snapshot(device)
        yield result.snapshot()
        if not loaded:
            result.done = True
            yield result.snapshot()
            return
        tokenizer = loaded[0][1].tokenizer
        ids, prompt_warnings = encode_prompt(tokenizer, prompt, settings.chat_template, limits)
        result.prompt_token_ids = ids
        result.warnings += prompt_warnings
        own = yield from _stream_all(result, loaded, ids, settings, stop, schedule, frame_seconds)
        if not (stop is not None and stop.is_set()):
            start = time.perf_counter()
            _score(result, loaded, ids, own)
            result.scoring_seconds = time.perf_counter() - start
        del own  # logits and KV caches: free them before the last frame
    result.memory = metrics.memory_snapshot(device)
    result.done = True
    yield result.snapshot()


def _prepare(model: str, variants: Sequence[str] | str | None, text: str, custom: dict | None, device_map: str,
             cache: ModelCache | None, limits: Limits, progress: Callable[[float, str], None] | None = None):
    """Every check that can refuse a request before any weights are read."""
    text, warnings = clean_prompt(text, limits)
    presets, preset_warnings = select_presets(variants, custom, limits)
    device = resolve_device(device_map)
    source = catalog.resolve(model, progress=progress)
    check_causal_lm(source)
    cache = cache or default_cache()
    cache.check_fits([(source, p, device) for p in presets])
    return text, warnings + preset_warnings, presets, device, source, cache


def _lease_all(cache: ModelCache, source: ModelSource, presets: list[QuantPreset], rows: list[VariantResult],
               device_map: str, leases: ExitStack,
               progress: Callable[[float, str], None] | None) -> list[tuple[VariantResult, LoadedModel]]:
    """Load (or find) and lease every variant of one request.

    Requests take this step one at a time (`cache.admission()`), so a request that waits for
    memory waits only for generations that are running, never for another request that is
    itself waiting half-loaded. Progress goes to the callback: nothing is yielded while the
    admission is held.
    """
    loaded = []
    with cache.admission():
        for i, (preset, row) in enumerate(zip(presets, rows)):
            start = time.perf_counter()

            def report(fraction: float, message: str, i: int = i) -> None:
                if progress:
                    progress((i + fraction) / len(presets), message)

            try:
                entry, hit = leases.enter_context(cache.lease(source, preset, device_map, progress=report))
            except Exception as exc:
                row.status, row.error, row.message = "error", _error_text(exc), "could not load"
                continue
            row.cache_hit = hit
            row.load_seconds, row.loaded_from = entry.load_seconds, entry.loaded_from
            row.footprint_bytes, row.footprint_hf_bytes = entry.footprint_bytes, entry.footprint_hf_bytes
            row.warnings += entry.warnings
            row.message = "cached" if hit else f"loaded {preset.name} in {time.perf_counter() - start:.1f} s"
            loaded.append((row, entry))
    return loaded


def _code(preset: QuantPreset, source: ModelSource, device: str, device_map: str, prompt: str,
          settings: GenerationSettings) -> str:
    return preset.to_code(source.code_id, device=device, device_map=device_map, prompt=prompt,
                          max_new_tokens=settings.max_new_tokens, chat_template=settings.chat_template,
                          source_comment=source.note)


class _Events(queue.Queue):
    """The streams' shared event queue; `ended` is set each time a stream finishes or fails."""

    def __init__(self) -> None:
        super().__init__()
        self.ended = threading.Event()

    def _put(self, item) -> None:
        super()._put(item)
        if item[0] != "token":
            self.ended.set()


def _stream_all(result: ComparisonResult, loaded: list[tuple[VariantResult, LoadedModel]], ids: list[int],
                settings: GenerationSettings, stop: threading.Event | None, schedule: str,
                frame_seconds: float) -> Generator[ComparisonResult, None, dict[str, quality.OwnRun]]:
    """Stream every loaded variant; returns what each generation left for scoring."""
    events = _Events()
    input_ids = torch.tensor([ids], dtype=torch.long)
    streams: dict[TokenStream, tuple[VariantResult, IncrementalDecoder]] = {}
    # Each variant's own logits are its teacher-forced predictions up to where it departs from fp32:
    # kept (within a memory cap), they spare most of the scoring's forward passes.
    vocab = getattr(loaded[0][1].model.config, "vocab_size", 0)
    keep = len(loaded) * settings.max_new_tokens * vocab * 4 <= MAX_KEPT_LOGITS_BYTES
    for row, entry in loaded:
        tok = entry.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        stream = TokenStream(entry.model, input_ids, settings, pad_token_id=pad, events=events, schedule=schedule,
                             model_lock=entry.generate_lock if schedule == "threads" else None,
                             keep_logits=keep, tag=row.name)
        streams[stream] = (row, IncrementalDecoder(tok))
        row.status, row.message = "generating", "generating…"
    try:
        for stream in streams:
            stream.start()
        running = len(streams)
        last_frame = 0.0
        while running:
            pause = last_frame + frame_seconds - time.perf_counter()
            if pause > 0:  # let tokens gather: fewer frames, and the consumer stays off the CPU meanwhile;
                events.ended.wait(pause)  # a stream that ends cuts the pause short
            events.ended.clear()
            try:
                first = events.get(timeout=0.5)
            except queue.Empty:
                first = None
            if stop is not None and stop.is_set():
                for stream in streams:
                    stream.stop()
            batch = [first] if first else []
            while True:  # coalesce whatever else has arrived into one frame
                try:
                    batch.append(events.get_nowait())
                except queue.Empty:
                    break
            for tag, stream, payload in batch:
                row, decoder = streams[stream]
                if tag == "token":
                    decoder.add(payload)
                    row.text, row.token_ids, row.new_tokens = decoder.text, decoder.ids, len(decoder.ids)
                    _timings(row, stream)
                else:
                    running -= 1
                    _finish(row, stream, decoder, tag, payload)
            if batch:
                last_frame = time.perf_counter()
                yield result.snapshot()
    finally:
        for stream in streams:
            stream.stop()
        for stream in streams:
            stream.join(JOIN_SECONDS)
    return {row.name: quality.OwnRun(s.result.logits, s.result.past_key_values, list(row.token_ids))
            for s, (row, _) in streams.items()}


def _score(result: ComparisonResult, loaded: list[tuple[VariantResult, LoadedModel]], prompt_ids: list[int],
           own: dict[str, quality.OwnRun] | None = None) -> None:
    """Teacher-forced agreement of every finished variant with fp32, on fp32's continuation."""
    reference = result.variants[0]
    done = [(row, entry) for row, entry in loaded if row.status == "done"]
    if not done or done[0][0] is not reference or not reference.token_ids:
        result.warnings.append("No agreement metrics: the fp32 reference did not finish.")
        return
    tokenizer = done[0][1].tokenizer
    try:
        scores = COMPUTE.call(quality.score_variants, [entry.model for _, entry in done],
                              prompt_ids + reference.token_ids, len(prompt_ids), decode=lambda t: tokenizer.decode([t]),
                              own=[(own or {}).get(row.name) for row, _ in done])
    except Exception as exc:  # metrics must never cost the user the answers
        result.warnings.append(f"Agreement metrics failed: {_error_text(exc)}")
        return
    for (row, _), agreement in zip(done, scores):
        row.perplexity = agreement.perplexity
        row.token_scores = [dataclasses.asdict(t) for t in agreement.tokens]
        if row is reference:
            continue
        for key, value in agreement.summary().items():
            setattr(row, key, value)
        row.first_divergence_token = quality.first_divergence(reference.token_ids, row.token_ids)
        row.reading = quality.plain_reading(row.name, agreement)


def _timings(row: VariantResult, stream: TokenStream) -> None:
    row.ttft_seconds = stream.result.ttft_seconds
    row.tokens_per_second = stream.result.tokens_per_second


def _finish(row: VariantResult, stream: TokenStream, decoder: IncrementalDecoder, tag: str, payload: Any) -> None:
    row.text, row.token_ids, row.new_tokens = decoder.finish(), decoder.ids, len(decoder.ids)
    _timings(row, stream)
    row.kv_cache_bytes = metrics.kv_cache_bytes(stream.result.past_key_values)
    if tag == "error":
        row.status, row.error, row.message = "error", _error_text(payload), "generation failed"
    elif stream.result.stopped:
        row.status, row.message = "stopped", f"stopped after {row.new_tokens} tokens"
    else:
        row.status, row.message = "done", f"{row.new_tokens} tokens"



def score_text(model: str, variants: Sequence[str] | str | None, text: str, *, custom: dict | None = None,
               device_map: str = "auto", cache: ModelCache | None = None, limits: Limits | None = None) -> dict[str, Any]:
    """Reference-text mode: every variant's perplexity, and its KL from fp32, over a given text."""
    limits = limits or Limits.from_env()
    text, warnings, presets, _, source, cache = _prepare(model, variants, text, custom, device_map, cache, limits)
    rows = [VariantResult(p.name) for p in presets]
    with ExitStack() as leases:
        loaded = _lease_all(cache, source, presets, rows, device_map, leases, None)
        if rows[0].status == "error":
            raise ValueError(rows[0].error)  # no fp32 reference, nothing to compare with
        ids = list(loaded[0][1].tokenizer(text)["input_ids"])
        limit = 4 * limits.max_prompt_tokens
        if len(ids) > limit:
            warnings.append(f"The text is {len(ids)} tokens; only its first {limit} are scored.")
            ids = ids[:limit]
        if len(ids) < 2:
            raise ValueError("The text needs at least two tokens to score.")
        scores = COMPUTE.call(quality.score_variants, [entry.model for _, entry in loaded], ids, 1)
    summaries = {row.name: agreement.summary() for (row, _), agreement in zip(loaded, scores)}
    return {"model": source.name, "tokens": len(ids) - 1, "warnings": warnings,
            "variants": [{"name": row.name, "error": row.error, **summaries.get(row.name, {})} for row in rows]}
