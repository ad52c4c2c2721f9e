"""Different prompts decoded in one left-padded batch, where that is exact.

Why: decoding is bound by reading the weights, so 8 sequences per forward pass
cost little more than one. Bare `generate` on this CPU, 8 different prompts of
the bundled model, 32 greedy tokens: one left-padded batch took 6.1 s against
29.6 s for the eight alone, and gave the same token ids for all 8 (fp32).
Batching must never let one person's prompt change another's tokens, so only
what was found exact batches (`EXACT`): fp32 on CPU. Measured the same way,
bf16 changed 4 of 8 rows, and fp16 kept 8 of 8 but ran only 1.5x faster, so
it is not worth the risk; bitsandbytes int8 picks its outlier columns over the
whole batch, and 4-bit computes in bf16 after repacking on AVX512-BF16 CPUs
(issue 14), so quantized variants never batch: they interleave as before.
`tests/test_batching.py` checks 8 different prompts batched and alone give the
same token ids, through this module, for every entry of `EXACT`.

How: a new stream of an exact model starts at once, in a `Batch` of its own (a
lone request waits for nothing). A stream that arrives while that batch is
young (under `JOIN_SECONDS` old) and still decoding one row joins it: the lone
row stops at its next step, the batch gathers rows until none has arrived for
`QUIET_SECONDS`, and then decodes all of them from their prompts. Greedy
decoding is deterministic and batching is exact, so the restarted row
regenerates the tokens its listener already has; those are checked, not sent
again. A batch decoding several rows is never restarted: its prefill is
compute-bound (8 prompts of ~60 tokens take about as long as 10 decoding steps
here), so an arrival then starts a new batch that the next arrivals join. Each
row keeps its own `max_new_tokens`, EOS and Stop (a row ends without ending the
batch). A batched row keeps its own logits for scoring, as a lone stream does:
8 prompts of the bundled model, 24 tokens, were at most 8.2e-5 from the lone
run's, as close as a full teacher-forced pass comes to them (7.6e-5), and a
scoring pass of its own for each batched session cost 0.45 s of compute apiece
here (8 prompts of 32 tokens: 2.5x the one-by-one throughput with those passes,
3.1x without). It keeps no KV cache (the batch's cannot be cropped per row); a
batch that ran with a single row keeps one, as a lone stream does.

Figures for a session in a batch: `step_seconds` are the batch's steps (the
compute this row shared), and the stream's `batch_rows` the most rows it
decoded with (the page's "batch size").
"""

from __future__ import annotations

import threading
import time
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from . import config as qconfig
from .compute import COMPUTE
from .errors import QuantplayError
from .streaming import TokenStream

JOIN_SECONDS = 0.5  # a batch this young takes new rows
QUIET_SECONDS = 0.1  # a batch that is gathering rows starts once none has arrived for this long
EXACT = {("cpu", torch.float32)}  # (device type, dtype) whose left-padded batches give the lone tokens


def exact(model) -> bool:
    """Whether `model` decodes a left-padded batch with the same tokens as each prompt alone (see EXACT)."""
    if getattr(model, "is_quantized", False) or getattr(model, "hf_quantizer", None) is not None:
        return False
    try:
        return (model.device.type, model.dtype) in EXACT
    except AttributeError:
        return False


def batchable(stream: TokenStream) -> bool:
    return (stream.schedule == "interleave" and not stream.settings.do_sample and stream.model_lock is None
            and qconfig.current().max_batch > 1 and exact(stream.model))


class Batch:
    """Rows (streams) of one model and settings, decoded together as a greenlet on the compute thread."""

    def __init__(self, key: tuple, first: TokenStream) -> None:
        self.key = key
        self.model = first.model
        self.rows: list[TokenStream] = []
        self.joining = [first]
        self.started_at = time.monotonic()
        self.finished = False
        self.restart = False
        self.quiet_at = self.started_at

    def takes(self, max_batch: int) -> bool:
        """Whether a new row may join (under BATCHER.lock): the batch is young, has room, and is gathering
        or decoding a single row (one prompt's prefill is cheap to redo; a full batch's is not)."""
        return (not self.finished and time.monotonic() - self.started_at < JOIN_SECONDS
                and len(self.rows) + len(self.joining) < max_batch and len(self.rows) <= 1)

    def add(self, stream: TokenStream) -> None:
        """Under BATCHER.lock: `stream` joins; a lone row decoding stops at its next step to start over with it."""
        stream.batch = self
        self.joining.append(stream)
        self.quiet_at = time.monotonic() + QUIET_SECONDS
        self.restart = bool(self.rows)

    def _gather(self, max_batch: int) -> None:
        """Wait (letting the other variants take their turns) until no row has arrived for QUIET_SECONDS,
        the batch is full, or it is JOIN_SECONDS old: then its prefill is done once, for everyone."""
        while True:
            with BATCHER.lock:
                now = time.monotonic()
                if (now >= self.quiet_at or now - self.started_at >= JOIN_SECONDS
                        or len(self.rows) + len(self.joining) >= max_batch):
                    return
            COMPUTE.yield_turn()
            time.sleep(0.002)  # off the GIL: the requests still arriving get to run

    def run(self) -> None:
        """Decode until no row is open. A lone first row starts at once; rows that arrive while the batch is young
        make it gather (`_gather`) and then start over with all of them."""
        max_batch = qconfig.current().max_batch
        while True:
            with BATCHER.lock:
                gather = len(self.joining) + len(self.rows) > 1 and bool(self.joining)
            if gather:
                self._gather(max_batch)
            with BATCHER.lock:  # the batch ends under the lock: no row can join one that is over
                self.rows = [r for r in self.rows if not r.finished.is_set()] + self.joining
                self.joining, self.restart = [], False
                rows = list(self.rows)
                for row in rows:
                    row.batch_rows = max(row.batch_rows, len(rows))
                if not rows:
                    self.finished = True
                    if BATCHER.batches.get(self.key) is self:
                        del BATCHER.batches[self.key]
                    return
            self._generate(rows)
            if not self.restart:
                for row in rows:  # a safety net: generate ended with a row still open
                    if not row.finished.is_set():
                        _end(row, "done", None)

    def _generate(self, rows: list[TokenStream]) -> None:
        first = rows[0]
        pad = first.pad_token_id if first.pad_token_id is not None else 0
        width = max(r.input_ids.shape[-1] for r in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            n = r.input_ids.shape[-1]
            ids[i, width - n:] = r.input_ids.reshape(-1)
            mask[i, width - n:] = 1
        alone = len(rows) == 1
        hooks = _BatchHooks(self, rows, defer_end=alone)
        kwargs: dict[str, Any] = {
            "input_ids": ids.to(self.model.device), "attention_mask": mask.to(self.model.device),
            "max_new_tokens": max(r.settings.max_new_tokens for r in rows),
            "min_new_tokens": first.settings.min_new_tokens or None, "do_sample": False,
            "stopping_criteria": StoppingCriteriaList([hooks]), "pad_token_id": first.pad_token_id,
            "return_dict_in_generate": alone, "output_logits": alone and first.keep_logits,
        }
        if not alone and any(r.keep_logits for r in rows):
            kwargs["logits_processor"] = LogitsProcessorList([_KeepLogits(hooks)])
        try:
            out = self.model.generate(**kwargs)
        except BaseException as exc:  # every open row gets the error; the process goes on
            for r in rows:
                if not r.finished.is_set():
                    r.result.error = exc
                    _end(r, "error", exc)
            return
        if hooks.deferred:  # ran alone, from its prompt: keep what a lone stream keeps, then say done
            first.result.past_key_values = getattr(out, "past_key_values", None)
            if first.keep_logits and getattr(out, "logits", None):
                first.result.logits = torch.stack([step[0] for step in out.logits]).float().cpu()
            _end(first, "done", None)


class _KeepLogits(LogitsProcessor):
    """Keeps each open row's logits of every step (the hooks hand them over as the row ends); changes nothing."""

    def __init__(self, hooks: _BatchHooks) -> None:
        self.hooks = hooks

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for i, row in enumerate(self.hooks.rows):
            if row.keep_logits and not self.hooks.ended[i]:
                self.hooks.logits[i].append(scores[i].float().cpu())
        return scores


class _BatchHooks(StoppingCriteria):
    """Called by generate once per step, after it appended the step's tokens: hands each open row its
    token (or checks it against what that row already sent, after a restart), ends rows, passes the baton.
    With `defer_end` (a lone row) the row's "done" waits until generate returns with its logits."""

    def __init__(self, batch: Batch, rows: list[TokenStream], defer_end: bool = False) -> None:
        self.batch = batch
        self.rows = rows
        self.defer_end = defer_end
        self.deferred = False
        self.ended = [False] * len(rows)
        self.made = [0] * len(rows)  # tokens this generate call made per row
        self.logits: list[list[torch.Tensor]] = [[] for _ in rows]  # per row, when _KeepLogits keeps them
        self.eos = _eos_ids(batch.model)
        for r in rows:
            r.result.step_seconds.clear()  # re-timed as the rows' tokens are made again
        self.turn_start = time.perf_counter()

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        step = time.perf_counter() - self.turn_start
        for i, (row, token) in enumerate(zip(self.rows, input_ids[:, -1].tolist())):
            if self.ended[i] or row.finished.is_set():
                self.ended[i] = True
                continue
            n = self.made[i]
            self.made[i] += 1
            row.result.step_seconds.append(step)
            sent = row.result.token_ids
            if n < len(sent) and sent[n] != token:  # never expected (EXACT): one row must not show two answers
                exc = QuantplayError(f"Batched decoding changed token {n} ({sent[n]} → {token}); "
                                     "set QUANTPLAY_MAX_BATCH=1 and report it.")
                row.result.error = exc
                _end(row, "error", exc)
                self.ended[i] = True
                continue
            if n >= len(sent):
                row._push("token", int(token))
            if token in self.eos or self.made[i] >= row.settings.max_new_tokens or row.stop_event.is_set():
                self.ended[i] = True
                row.result.stopped = row.stop_event.is_set()
                if self.logits[i]:  # before its "done": its sessions score with them
                    row.result.logits = torch.stack(self.logits[i])
                    self.logits[i] = []
                if self.defer_end:
                    self.deferred = True
                else:
                    _end(row, "done", None)
        stop_all = self.batch.restart or all(self.ended)
        if not stop_all:
            COMPUTE.yield_turn()  # the other variants (and batches) take their turn
        self.turn_start = time.perf_counter()  # time spent while others took their turn is not ours
        stop_all = stop_all or self.batch.restart  # a row joined during our wait
        return torch.tensor([stop_all or e for e in self.ended], dtype=torch.bool, device=input_ids.device)


def _end(row: TokenStream, tag: str, payload: Any) -> None:
    row._push(tag, payload)
    row._closed()


def _eos_ids(model) -> set[int]:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        return set()
    return {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}


class Batcher:
    """The young batch per (model, settings, pad token): where a new exact stream goes."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.batches: dict[tuple, Batch] = {}

    @staticmethod
    def key(stream: TokenStream) -> tuple:
        s = stream.settings
        return id(stream.model), s.min_new_tokens, s.chat_template, stream.pad_token_id

    def start(self, stream: TokenStream) -> TokenStream:
        """Start `stream`: in a batch where its model is exact (see the module docstring), else alone."""
        if not batchable(stream):
            return stream.start()
        stream.started = True
        stream._register()
        key = self.key(stream)
        with self.lock:
            batch = self.batches.get(key)
            if batch is not None and batch.model is stream.model and batch.takes(qconfig.current().max_batch):
                batch.add(stream)
                return stream
            batch = Batch(key, stream)
            stream.batch = batch
            self.batches[key] = batch
        COMPUTE.spawn(batch.run)
        return stream


BATCHER = Batcher()
