"""One variant's token stream: `model.generate` with tokens out a queue.

`TokenStream` owns the stop flag and the timings. With the "interleave"
schedule (the default) it runs as a greenlet on quantplay's compute thread
and hands over after every token, so N variants take turns one forward pass
at a time (on CUDA the turns also give each variant its own VRAM peak:
`metrics.VramTurns`); with "threads" it gets a thread of its own (for GPUs,
where concurrent kernels may pay). Sampling uses a per-stream
`torch.Generator`, so a seed gives every variant the same random draws
whatever the interleaving. A stream has listeners (`Listener`: one session's
queue and Stop): one that joins late is first given the tokens so far, one that
stops leaves, and the stream stops when its last listener does (`sharing.py`
lets identical requests listen to one stream, and its `StreamGroup` reads a
session's listeners as frames). It knows nothing about presets, scoring or the
result schema; what to generate comes as `sampling.GenerationSettings`.
"""

from __future__ import annotations

import queue
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import LogitsProcessorList, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from . import metrics
from .compute import COMPUTE
from .errors import QuantplayError
from .sampling import GenerationSettings, SeededSampler

SCHEDULES = ("interleave", "threads")
END_TAGS = ("done", "error")  # a stream's last event; "token" events come before it
JOIN_SECONDS = 30.0


class _Discard:
    """The events queue of a stream only its listeners read."""

    def put(self, item: Any) -> None:
        pass


DISCARD = _Discard()
_live: set = set()
_live_lock = threading.Lock()


def live_streams() -> int:
    """Streams started and not yet finished (tests use it to show none are orphaned)."""
    with _live_lock:
        return len(_live)


class _Hooks(StoppingCriteria, BaseStreamer):
    """Called by generate once per step: pushes tokens, honours the stop flag, passes the baton."""

    def __init__(self, stream: TokenStream) -> None:
        self.stream = stream
        self.prompt_seen = False

    # BaseStreamer
    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate first sends the prompt
            self.prompt_seen = True
            return
        for token in value.reshape(-1).tolist():
            self.stream._push("token", int(token))

    def end(self) -> None:
        pass

    # StoppingCriteria
    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        # generate calls this once per new token, before it hands the token to put()
        stream = self.stream
        now = time.perf_counter()
        stream.result.step_seconds.append(now - stream._turn_start)
        stream._turn_start = now
        if stream.vram is not None:
            stream.vram.end()
        if stream.schedule == "interleave" and not stream.stop_event.is_set():
            COMPUTE.yield_turn()
            stream._turn_start = time.perf_counter()  # time spent while others took their turn is not ours
            if stream.vram is not None:
                stream.vram.begin()
        stop = stream.stop_event.is_set()
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


@dataclass
class StreamResult:
    """Tokens and timings of one stream.

    `step_seconds[i]` is the compute time of token i: from the moment this
    stream held the CPU (or started) to the token's selection. Time spent waiting while
    other variants took their turn is excluded, so the figures are what the
    variant would show alone, and variants can be compared in one run.
    """

    token_ids: list[int] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)
    past_key_values: Any = None
    logits: torch.Tensor | None = None  # [tokens, vocab] float32, when kept (scoring reuses them)
    vram_peak_bytes: int | None = None  # on CUDA, interleaved: the most VRAM it held beyond its weights (VramTurns)
    stopped: bool = False
    error: BaseException | None = None

    @property
    def ttft_seconds(self) -> float | None:
        """Prefill and the first token."""
        return self.step_seconds[0] if self.step_seconds else None

    @property
    def tokens_per_second(self) -> float | None:
        """Decode speed: tokens after the first over their compute time."""
        decode = sum(self.step_seconds[1:])
        if len(self.step_seconds) >= 2 and decode > 0:
            return (len(self.step_seconds) - 1) / decode
        return None


class Listener:
    """One session's view of a stream: its own events queue, its own timings and its own Stop.

    Events go to `events` as (tag, listener, payload), with exactly one "done" or "error" last.
    `left` says it stopped while others listened on (the stream then ran on without it).
    """

    def __init__(self, stream: TokenStream, events: Any, ended: threading.Event | None) -> None:
        self.stream = stream
        self.events = events
        self.ended = ended
        self.left = False
        self.first_token_at: float | None = None  # perf_counter times, for the session's own wall figures
        self.ended_at: float | None = None
        self.batch_size = 1  # listeners the stream had when this one ended, or the rows it was batched with

    @property
    def result(self) -> StreamResult:
        return self.stream.result

    @property
    def stopped(self) -> bool:
        return self.left or self.stream.result.stopped

    def put(self, tag: str, payload: Any) -> None:
        now = time.perf_counter()
        if tag == "token" and self.first_token_at is None:
            self.first_token_at = now
        if tag in END_TAGS:
            self.ended_at, self.batch_size = now, self.stream.batch_size
        self.events.put((tag, self, payload))
        if tag in END_TAGS and self.ended is not None:
            self.ended.set()

    def stop(self) -> None:
        self.stream.leave(self)


class TokenStream:
    """Runs one greedy or seeded-sampling generation in a thread.

    Events go to `events` as (tag, stream, payload) with tag "token", "done" or
    "error"; `events` may be shared by several streams. After pushing its last
    event ("done" or "error") a stream sets `ended`, when given, so a reader
    pausing between frames can wake for it (see `StreamGroup`).
    """

    def __init__(self, model, input_ids: torch.Tensor, settings: GenerationSettings, *,
                 pad_token_id: int | None = None, events: queue.Queue | None = None,
                 ended: threading.Event | None = None,
                 schedule: str = "interleave", model_lock: threading.Lock | None = None,
                 keep_logits: bool = False, tag: Any = None,
                 on_finish: Any = None) -> None:
        if schedule not in SCHEDULES:
            raise QuantplayError(f"schedule must be one of {', '.join(SCHEDULES)}.")
        self.model = model
        self.input_ids = input_ids
        self.settings = settings
        self.pad_token_id = pad_token_id
        self.events = events if events is not None else queue.Queue()
        self.ended = ended
        self.schedule = schedule
        self.model_lock = model_lock  # threads: one generation at a time per model
        self.keep_logits = keep_logits
        self.tag = tag
        self.stop_event = threading.Event()
        self.finished = threading.Event()
        self.result = StreamResult()
        self._turn_start = 0.0
        self.vram: metrics.VramTurns | None = None  # set while it generates on CUDA, interleaved
        self.on_finish = on_finish  # called with the stream once it has finished (sharing forgets it)
        self.listeners: list[Listener] = []
        self.listeners_total = 0  # every listener it ever had: the batch_size a session reports
        self.key: tuple | None = None  # what sharing.SharedGenerations filed it under
        self.memo: dict = {}  # results worked out once for every listener (sharing.once)
        self.started = False
        self.batch = None  # the batching.Batch decoding it with other prompts, if one is
        self.batch_rows = 1  # the most sequences it decoded with (batching.py)
        self._lock = threading.Lock()  # listeners join, leave and receive events in one order
        self._end: tuple[str, Any] | None = None

    def start(self) -> TokenStream:
        """Generate alone (`batching.BATCHER.start` decides whether it joins a batch instead)."""
        self.started = True
        self._register()
        if self.schedule == "interleave":
            COMPUTE.spawn(self._run)
        else:
            threading.Thread(target=self._run, name=f"quantplay-generate-{self.tag}", daemon=True).start()
        return self

    @property
    def batch_size(self) -> int:
        """Sessions it served or sequences it decoded with, whichever is more (a session's `batch_size`)."""
        return max(self.listeners_total, self.batch_rows)

    def _register(self) -> None:
        with _live_lock:
            _live.add(self)

    def _closed(self) -> None:
        """After the last event: it no longer counts as live, and `on_finish` learns it finished."""
        with _live_lock:
            _live.discard(self)
        self.finished.set()
        if self.on_finish is not None:
            self.on_finish(self)

    def stop(self) -> None:
        self.stop_event.set()

    def join(self, timeout: float | None = None) -> bool:
        return self.finished.wait(timeout)

    def listen(self, events: Any, ended: threading.Event | None = None, *,
               unless_stopping: bool = False) -> Listener | None:
        """A new listener: given the tokens so far (and the end, if it came) at once, then live events.

        With `unless_stopping`, None where the stream is stopping (its last listener left).
        """
        with self._lock:
            if unless_stopping and self.stop_event.is_set():
                return None
            listener = Listener(self, events, ended)
            self.listeners.append(listener)
            self.listeners_total += 1
            for token in self.result.token_ids:
                listener.put("token", token)
            if self._end is not None:
                listener.put(*self._end)
            return listener

    def leave(self, listener: Listener) -> None:
        """A listener's Stop: it leaves with a "done" of its own while others listen; the last one stops the stream."""
        with self._lock:
            if listener not in self.listeners or listener.ended_at is not None:
                return
            if len(self.listeners) > 1:
                self.listeners.remove(listener)
                listener.left = True
                listener.put("done", None)
                return
            self.stop_event.set()  # under the lock: nobody joins a stream that is stopping

    def _push(self, tag: str, payload: Any) -> None:
        with self._lock:
            if tag == "token":
                self.result.token_ids.append(payload)
            else:
                self._end = (tag, payload)
            for listener in self.listeners:
                listener.put(tag, payload)
        self.events.put((tag, self, payload))
        if tag in END_TAGS and self.ended is not None:
            self.ended.set()

    def _generate_kwargs(self) -> dict[str, Any]:
        s = self.settings
        hooks = _Hooks(self)
        kwargs: dict[str, Any] = {
            "input_ids": self.input_ids.to(self.model.device),
            "attention_mask": torch.ones_like(self.input_ids).to(self.model.device),
            "max_new_tokens": s.max_new_tokens,
            "min_new_tokens": s.min_new_tokens or None,
            "do_sample": False,
            "streamer": hooks,
            "stopping_criteria": StoppingCriteriaList([hooks]),
            "return_dict_in_generate": True,
            "output_logits": self.keep_logits,
            "pad_token_id": self.pad_token_id,
        }
        if s.do_sample:
            kwargs["logits_processor"] = LogitsProcessorList([SeededSampler(s.temperature, s.top_p, s.seed)])
        return kwargs

    def _run(self) -> None:
        result = self.result
        locked = False
        try:
            kwargs = self._generate_kwargs()
            if self.model_lock is not None:
                self.model_lock.acquire()
                locked = True
            self._turn_start = time.perf_counter()
            device = torch.device(getattr(self.model, "device", "cpu"))
            if device.type == "cuda" and self.schedule == "interleave":
                self.vram = metrics.VramTurns(device)
                self.vram.begin()
            if not self.stop_event.is_set():
                # Inference mode: interleaved greenlets get it from the compute thread's hub (its state
                # belongs to the thread, and greenlets entering it would restore it out of order).
                with torch.inference_mode() if self.schedule == "threads" else nullcontext():
                    out = self.model.generate(**kwargs)
                result.past_key_values = getattr(out, "past_key_values", None)
                if self.keep_logits and getattr(out, "logits", None):
                    result.logits = torch.stack([step[0] for step in out.logits]).float().cpu()
            if self.vram is not None:
                self.vram.end()
                result.vram_peak_bytes = self.vram.own_peak_bytes
            result.stopped = self.stop_event.is_set()
            self._push("done", None)
        except BaseException as exc:  # surfaces in the consumer, never kills the process
            result.error = exc
            self._push("error", exc)
        finally:
            if locked:
                self.model_lock.release()
            self._closed()
