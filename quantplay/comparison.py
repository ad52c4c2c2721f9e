"""run_comparison(): the one generator the CLI, the API and the page all call.

It validates a request, loads every variant through the cache, streams all of
them at once and yields `ComparisonResult` frames; every frame has the shape
of the final result. It knows nothing about gradio or the terminal. It keeps
the orchestration and the schema; the pieces it calls live below it: frame
pacing and stopping in `sharing.StreamGroup`, the tokenizer side in `tokens`,
each column's code snippet in `snippets`, the agreement maths in `quality`.
`reference.score_text` (reference-text mode) shares its checks and loading.
Identical requests read one generation and one scoring (`sharing.SHARED`).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import ExitStack
from typing import Any

import torch

from . import catalog, hub, metrics, placement, quality, sharing, weights
from . import config as qconfig
from .catalog import ModelSource
from .compute import COMPUTE
from .config import Config, Limits
from .errors import QuantplayError
from .loaded import LoadedModel, resolve_device
from .loader import ModelCache, default_cache
from .presets import QuantPreset
from .pretrained import check_causal_lm
from .sampling import GenerationSettings
from .schema import ComparisonResult, VariantResult  # the one result schema (re-exported here)
from .sharing import StreamGroup
from .snippets import variant_code
from .streaming import SCHEDULES, Listener
from .tokens import IncrementalDecoder, encode_prompt
from .validate import check_frame_seconds, check_settings, clean_prompt, select_presets

MAX_KEPT_LOGITS_BYTES = 256 * 2**20
FRAME_SECONDS = 0.1  # at most 10 frames a second by default: tokens that arrive faster share a frame
# (each frame costs the server and its client CPU that the generation would otherwise have; see README)


def _error_text(exc: BaseException) -> str:
    """One line a person can read, for a column's error."""
    if isinstance(exc, (ValueError, RuntimeError, OSError)) and str(exc):
        return hub.redact(str(exc).splitlines()[0][:500])
    return hub.redact(f"{type(exc).__name__}: {str(exc)[:300]}")


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
    config: Config | None = None,
) -> Iterator[ComparisonResult]:
    """Yield frames while every variant loads and streams; the last has done=True.

    Raises QuantplayError (PresetError, ModelUnavailable, …) before the first frame
    for a request that cannot run. Errors in one variant mark only its column.
    While tokens stream, frames come at most once per `frame_seconds` (default FRAME_SECONDS).
    `limits` default to the config's (`config`, or the process's).
    """
    started = time.perf_counter()
    limits = limits or (config or qconfig.current()).limits
    settings, setting_warnings = check_settings(settings, limits)
    frame_seconds = check_frame_seconds(FRAME_SECONDS if frame_seconds is None else frame_seconds)
    prompt, warnings, presets, places, source, cache = prepare_request(model, variants, prompt, custom, device_map, cache,
                                                                       limits, progress, config)
    device = resolve_device(device_map)
    schedule = _schedule(schedule)
    result = _new_result(source, presets, prompt, settings, warnings + setting_warnings, device, places)
    yield result.snapshot()

    with ExitStack() as leases:
        for row in result.variants:
            row.message = "loading…"
        yield result.snapshot()
        loaded = lease_all(cache, source, presets, result.variants, places, leases, progress)
        result.memory = metrics.memory_snapshot(device)
        loaded = _unless_stopped(loaded, stop)
        yield result.snapshot()
        if not loaded:
            result.done = True
            yield result.snapshot()
            return
        tokenizer = loaded[0][1].tokenizer
        ids, prompt_warnings = encode_prompt(tokenizer, prompt, settings.chat_template, limits.max_prompt_tokens)
        result.prompt_token_ids = ids
        result.warnings += prompt_warnings
        with weights.OutlierHooks({row.name: entry.model for row, entry in loaded}) as outliers:
            own = yield from _stream_all(result, loaded, ids, settings, stop, schedule, frame_seconds, started)
        start = time.perf_counter()
        _score(result, loaded, ids, own, stopped=stop is not None and stop.is_set())
        result.scoring_seconds = time.perf_counter() - start
        del own  # logits and KV caches: free them before the last frame
        result.weights = weights.final_report([(row.name, entry.layer_errors) for row, entry in loaded], outliers)
    result.memory = metrics.memory_snapshot(device)
    result.done = True
    yield result.snapshot()


def _unless_stopped(loaded: list[tuple[VariantResult, LoadedModel]], stop: threading.Event | None) -> list:
    """Stopped while loading: the loads finish (and stay cached), nothing is generated."""
    if stop is None or not stop.is_set():
        return loaded
    for row, _ in loaded:
        row.status, row.message = "stopped", "stopped before generating"
    return []


def _schedule(schedule: str | None) -> str:
    """"interleave" unless asked: on CUDA too, where it makes each variant's VRAM peak its own (metrics.VramTurns);
    "threads" lets a GPU overlap the variants' kernels (the gpu-check bench measures both)."""
    schedule = schedule or "interleave"
    if schedule not in SCHEDULES:
        raise QuantplayError(f"schedule must be one of {', '.join(SCHEDULES)}.")
    return schedule


def _new_result(source: ModelSource, presets: list[QuantPreset], prompt: str, settings: GenerationSettings,
                warnings: list[str], device: str, places: list[Place]) -> ComparisonResult:
    """The first frame: every column named, with its preset's settings, where it will run and its code;
    nothing loaded yet."""
    result = ComparisonResult(
        model=source.name, prompt=prompt, settings=dataclasses.asdict(settings), warnings=warnings,
        environment=metrics.environment(device),
        variants=[VariantResult(p.name, settings=p.to_dict(), placement=place.words,
                                code=variant_code(p, source, resolve_device(place.device_map), place.device_map,
                                                  prompt, settings))
                  for p, place in zip(presets, places)])
    result.memory = metrics.memory_snapshot(device)
    return result


def prepare_request(model: str, variants: Sequence[str] | str | None, text: str, custom: dict | None, device_map: str,
             cache: ModelCache | None, limits: Limits, progress: Callable[[float, str], None] | None = None,
             config: Config | None = None):
    """Every check that can refuse a request before any weights are read (or downloaded), and where each
    variant will run (`place`): a Hub model that is not cached yet is fetched, with progress, only once the
    checks have passed."""
    text, warnings = clean_prompt(text, limits)
    presets, preset_warnings = select_presets(variants, custom, limits)
    resolve_device(device_map)
    source = catalog.resolve(model, progress=progress, config=config, fetch=False)
    check_causal_lm(source)
    cache = cache or default_cache()
    places = place(cache, source, presets, device_map, torch.cuda.is_available())
    cache.check_fits([(source, p, resolve_device(where.device_map)) for p, where in zip(presets, places)])
    if source.kind == "hub" and not source.local_only:
        source = catalog.resolve(model, source.revision, progress=progress, config=config, fetch=True)
    return text, warnings + preset_warnings, presets, places, source, cache


@dataclasses.dataclass(frozen=True)
class Place:
    device_map: str  # where the loader puts the variant: "cpu" or "cuda:0" (or "auto")
    words: str | None  # for its column, e.g. "fp32 · in RAM: does not fit in 24 GiB VRAM"; None on a CPU-only machine


def place(cache: ModelCache, source: ModelSource, presets: list[QuantPreset], device_map: str,
          cuda: bool) -> list[Place]:
    """Where each variant runs. On a CUDA machine with device_map "auto", `placement.plan` decides over the
    cache's RAM and VRAM budgets (quantized variants on the GPU, the fp32 reference there when it fits,
    else in RAM; refused, naming both budgets, when a variant fits neither). Otherwise every variant goes
    where `device_map` says."""
    if not cuda:
        return [Place(device_map, None) for _ in presets]
    if device_map != "auto":
        return [Place(device_map, placement.column(p.name, resolve_device(device_map), True)[1]) for p in presets]
    needs = [placement.Need(p.name, p.quantized, cache.estimate(source, p, placement.GPU)[0]) for p in presets]
    plan = placement.plan(needs, cache.budgets["cpu"].bytes, cache.budgets["cuda"].bytes)
    return [Place(where.device, where.reason) for where in plan.placements]


def lease_all(cache: ModelCache, source: ModelSource, presets: list[QuantPreset], rows: list[VariantResult],
              places: list[Place], leases: ExitStack,
              progress: Callable[[float, str], None] | None) -> list[tuple[VariantResult, LoadedModel]]:
    """Load (or find) and lease every variant of one request.

    Requests take this step one at a time (`cache.admission()`), so a request that waits for
    memory waits only for generations that are running, never for another request that is
    itself waiting half-loaded. Progress goes to the callback: nothing is yielded while the
    admission is held.
    """
    loaded = []
    with cache.admission():
        for i, (preset, row, where) in enumerate(zip(presets, rows, places)):
            start = time.perf_counter()

            def report(fraction: float, message: str, i: int = i) -> None:
                if progress:
                    progress((i + fraction) / len(presets), message)

            try:
                entry, hit = leases.enter_context(cache.lease(source, preset, where.device_map, progress=report))
            except Exception as exc:
                row.status, row.error, row.message = "error", _error_text(exc), "could not load"
                continue
            row.cache_hit = hit
            row.load_seconds, row.loaded_from = entry.load_seconds, entry.loaded_from
            row.footprint_bytes, row.footprint_hf_bytes = entry.footprint_bytes, entry.footprint_hf_bytes
            if where.words is not None:  # a CUDA machine (null on a CPU-only one)
                row.device = entry.device
                memory = metrics.device_memory(entry.device)
                row.device_total_bytes, row.device_free_bytes = memory["device_total_bytes"], memory["device_available_bytes"]
            row.warnings += entry.warnings
            row.message = "cached" if hit else f"loaded {preset.name} in {time.perf_counter() - start:.1f} s"
            loaded.append((row, entry))
    return loaded


def _stream_all(result: ComparisonResult, loaded: list[tuple[VariantResult, LoadedModel]], ids: list[int],
                settings: GenerationSettings, stop: threading.Event | None, schedule: str,
                frame_seconds: float, started: float) -> Generator[ComparisonResult, None, dict[str, Listener]]:
    """Stream every loaded variant, one frame per batch of events; returns each column's listener, whose
    stream holds what its generation left for scoring. A variant's stream is shared with identical requests."""
    input_ids = torch.tensor([ids], dtype=torch.long)
    streams: dict[Listener, tuple[VariantResult, IncrementalDecoder]] = {}
    # Each variant's own logits are its teacher-forced predictions up to where it departs from fp32:
    # kept (within a memory cap), they spare most of the scoring's forward passes.
    vocab = getattr(loaded[0][1].model.config, "vocab_size", 0)
    keep = len(loaded) * settings.max_new_tokens * vocab * 4 <= MAX_KEPT_LOGITS_BYTES
    with StreamGroup() as group:  # leaving it (done, error, or the caller closing us) stops and joins every stream
        for row, entry in loaded:
            tok = entry.tokenizer
            pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
            stream = group.add(entry.model, input_ids, settings, pad_token_id=pad, schedule=schedule,
                               model_lock=entry.generate_lock if schedule == "threads" else None,
                               keep_logits=keep, tag=row.name, registry=sharing.SHARED)
            streams[stream] = (row, IncrementalDecoder(tok))
            row.status, row.message = "generating", "generating…"
        for batch in group.frames(frame_seconds, stop):
            for tag, stream, payload in batch:
                row, decoder = streams[stream]
                if tag == "token":
                    decoder.add(payload)
                    row.text, row.token_ids, row.new_tokens = decoder.text, decoder.ids, len(decoder.ids)
                    _timings(row, stream, started)
                else:
                    _finish(row, stream, decoder, tag, payload, started)
            yield result.snapshot()
    return {row.name: stream for stream, (row, _) in streams.items()}


def _score(result: ComparisonResult, loaded: list[tuple[VariantResult, LoadedModel]], prompt_ids: list[int],
           own: dict[str, Listener], stopped: bool = False) -> None:
    """Teacher-forced agreement of every finished variant with fp32, on fp32's continuation.

    Worked out once for all the sessions that read the same generations (`sharing.once`): the same
    fp32 and variant tokens give the same scores, and scoring crops the streams' KV caches. A stopped
    request scores the tokens generated so far (fp32's partial continuation) on its own, with full
    passes: its streams may run on for other sessions, whose caches and scores are not this one's.
    """
    reference = result.variants[0]
    done = [(row, entry) for row, entry in loaded if row.status in ("done", "stopped")]
    if not done or done[0][0] is not reference or not reference.token_ids:
        what = "generated no tokens" if stopped else "did not finish"
        result.warnings.append(f"No agreement metrics: the fp32 reference {what}.")
        return
    tokenizer = done[0][1].tokenizer
    streams = [own[row.name].stream for row, _ in done]
    runs = [quality.OwnRun(s.result.logits, s.result.past_key_values, list(row.token_ids))
            for s, (row, _) in zip(streams, done)]

    def compute():
        return COMPUTE.call(quality.score_variants, [entry.model for _, entry in done], prompt_ids + reference.token_ids,
                            len(prompt_ids), decode=lambda t: tokenizer.decode([t]), own=None if stopped else runs)

    try:
        scores = compute() if stopped else sharing.once(streams, compute)
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


def _timings(row: VariantResult, stream: Listener, started: float) -> None:
    row.ttft_seconds = stream.result.ttft_seconds
    row.tokens_per_second = stream.result.tokens_per_second
    if stream.first_token_at is not None:
        row.session_ttft_seconds = stream.first_token_at - started
    row.batch_size = stream.stream.batch_size


def _finish(row: VariantResult, stream: Listener, decoder: IncrementalDecoder, tag: str, payload: Any,
            started: float) -> None:
    row.text, row.token_ids, row.new_tokens = decoder.finish(), decoder.ids, len(decoder.ids)
    _timings(row, stream, started)
    row.session_seconds, row.batch_size = stream.ended_at - started, stream.batch_size
    row.kv_cache_bytes = metrics.kv_cache_bytes(stream.result.past_key_values)
    if stream.result.vram_peak_bytes is not None and row.footprint_bytes is not None:
        row.cuda_peak_allocated_bytes = row.footprint_bytes + stream.result.vram_peak_bytes
    if tag == "error":
        row.status, row.error, row.message = "error", _error_text(payload), "generation failed"
    elif stream.stopped:
        row.status, row.message = "stopped", f"stopped after {row.new_tokens} tokens"
    else:
        row.status, row.message = "done", f"{row.new_tokens} tokens"
