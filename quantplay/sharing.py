"""Sessions and the streams they read: identical requests share one generation.

Why: 8 people pressing Compare on the same example at once (fp32 + nf4, 48 tokens)
got 0.96x one person's token throughput, each waiting ~41 s for what takes one ~5 s
(issue 14): the compute thread interleaved 16 identical batch-1 generations.
`SharedGenerations.subscribe` gives a request a listener of the stream already running
for the same model object, prompt token ids, settings (greedy, or sampling with the
same seed, temperature and top_p; max_new_tokens too) and kept-logits choice, or
starts one. The result is the lone run's by construction: it *is* the lone run. A
late joiner is first given the tokens so far; a session's Stop ends its own
listener, and the stream stops when its last listener does. `once` works out a
result (the agreement scores) once for every session that reads the same streams.
Measured (docs/benchmarks.md, "A classroom at once"): 8 sessions on the same
prompt now get 6.0x one session's aggregate throughput, the slowest 1.32x a lone
session's time.

`StreamGroup` is one session's side: its listeners read together as frames.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from typing import Any, TypeVar

import torch

from .batching import BATCHER
from .sampling import GenerationSettings
from .streaming import DISCARD, END_TAGS, JOIN_SECONDS, Listener, TokenStream

T = TypeVar("T")


class SharedGenerations:
    """The streams running now, by what decides their tokens; `generations` counts those started."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[tuple, TokenStream] = {}
        self.generations = 0

    @staticmethod
    def key(model, input_ids: torch.Tensor, settings: GenerationSettings, kwargs: dict[str, Any]) -> tuple:
        # everything that can change a token or what the stream keeps; the tag only names it
        decisive = tuple(sorted((k, v) for k, v in kwargs.items() if k not in ("tag", "model_lock")))
        return id(model), tuple(input_ids.reshape(-1).tolist()), settings, decisive

    def subscribe(self, model, input_ids: torch.Tensor, settings: GenerationSettings, events: Any,
                  ended: threading.Event | None = None, **kwargs: Any) -> Listener:
        """A listener of the running stream with the same key (not one that is stopping), or of a new one."""
        key = self.key(model, input_ids, settings, kwargs)
        with self._lock:
            stream = self._running.get(key)
            if stream is not None and stream.model is model:
                listener = stream.listen(events, ended, unless_stopping=True)
                if listener is not None:
                    return listener
            stream = TokenStream(model, input_ids, settings, events=DISCARD, on_finish=self._forget, **kwargs)
            stream.key = key
            self._running[key] = stream
            self.generations += 1
            listener = stream.listen(events, ended)
        BATCHER.start(stream)  # alone, or with other prompts where that is exact (batching.py)
        return listener

    def _forget(self, stream: TokenStream) -> None:
        with self._lock:
            if self._running.get(stream.key) is stream:
                del self._running[stream.key]

    def running(self) -> int:
        with self._lock:
            return len(self._running)


SHARED = SharedGenerations()
_memo_lock = threading.Lock()


def once(streams: Sequence[TokenStream], compute: Callable[[], T]) -> T:
    """compute() once for every caller reading these same streams; the others wait for its result (or error).

    Kept on the first stream, so it goes when the last session lets go of that stream.
    """
    holder, key = streams[0], tuple(id(s) for s in streams[1:])
    with _memo_lock:
        entry = holder.memo.get(key)
        mine = entry is None
        if mine:
            entry = holder.memo[key] = (Future(), list(streams[1:]))  # the others kept alive: their ids stay theirs
    future = entry[0]
    if mine:
        try:
            future.set_result(compute())
        except BaseException as exc:
            future.set_exception(exc)
    return future.result()
class StreamGroup:
    """N listeners read together, one frame at a time.

    The listeners share one event queue; `frames()` yields, at most once per frame
    interval, every event that arrived since the last frame. Between frames the
    reader sleeps (tokens gather, and it stays off the CPU the generations need),
    except that a stream's end wakes it at once: the last tokens are shown without
    waiting out the interval. Leaving the `with` block stops every listener and
    joins the streams that stopped for it (a shared stream others still read runs on).
    """

    def __init__(self) -> None:
        self.events: queue.Queue = queue.Queue()
        self.ended = threading.Event()  # set by a listener as it gets "done" or "error"
        self.listeners: list[Listener] = []

    def add(self, model, input_ids: torch.Tensor, settings: GenerationSettings, *, registry: Any = None,
            **kwargs: Any) -> Listener:
        """A listener in this group (TokenStream's keyword arguments): of a stream of its own, which
        `frames()` starts, or of the one `registry.subscribe` finds or starts (see sharing.py)."""
        if registry is not None:
            listener = registry.subscribe(model, input_ids, settings, self.events, self.ended, **kwargs)
        else:
            stream = TokenStream(model, input_ids, settings, events=DISCARD, **kwargs)
            listener = stream.listen(self.events, self.ended)
        self.listeners.append(listener)
        return listener

    @property
    def streams(self) -> list[TokenStream]:
        return [listener.stream for listener in self.listeners]

    def frames(self, frame_seconds: float, stop: threading.Event | None = None) -> Iterator[list[tuple]]:
        """Start every stream not yet started; yield lists of (tag, listener, payload) until each listener has ended.

        A set `stop` stops every listener at its stream's next token; their "done" events still come.
        """
        for listener in self.listeners:
            if not listener.stream.started:
                listener.stream.start()
        running = len(self.listeners)
        last_frame = 0.0
        while running:
            pause = last_frame + frame_seconds - time.perf_counter()
            if pause > 0:
                self.ended.wait(pause)
            self.ended.clear()
            batch = []
            try:
                batch.append(self.events.get(timeout=0.5))
            except queue.Empty:
                pass
            if stop is not None and stop.is_set():
                self.stop()
            while True:  # coalesce whatever else has arrived into one frame
                try:
                    batch.append(self.events.get_nowait())
                except queue.Empty:
                    break
            running -= sum(tag in END_TAGS for tag, _, _ in batch)
            if batch:
                last_frame = time.perf_counter()
                yield batch

    def stop(self) -> None:
        for listener in self.listeners:
            listener.stop()

    def __enter__(self) -> StreamGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        for listener in self.listeners:
            stream = listener.stream
            if stream.started and not listener.left:  # a stream never started would never finish
                stream.join(JOIN_SECONDS)
