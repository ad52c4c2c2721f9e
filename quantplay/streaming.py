"""One variant's token stream: `model.generate` with tokens out a queue.

`TokenStream` owns the stop flag and the timings. With the "interleave"
schedule (the CPU default) it runs as a greenlet on quantplay's compute
thread and hands over after every token, so N variants take turns one
forward pass at a time; with "threads" it gets a thread of its own (for
GPUs, where concurrent kernels can pay). Sampling uses a per-stream
`torch.Generator`, so a seed gives every variant the same random draws
whatever the interleaving. It knows nothing about the other variants.
"""

from __future__ import annotations

import queue
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from .compute import COMPUTE

SCHEDULES = ("interleave", "threads")
_live: set = set()
_live_lock = threading.Lock()


def live_streams() -> int:
    """Streams started and not yet finished (tests use it to show none are orphaned)."""
    with _live_lock:
        return len(_live)


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 64
    min_new_tokens: int = 0  # the benchmark forces a length; users leave it at 0
    do_sample: bool = False
    temperature: float = 0.7
    top_p: float = 0.9
    seed: int = 0
    chat_template: bool = True


class SeededSampler(LogitsProcessor):
    """Temperature + top-p sampling with a private generator.

    It leaves only the drawn token finite, so greedy decoding then picks it:
    the random stream belongs to this variant, not to torch's global RNG.
    """

    def __init__(self, temperature: float, top_p: float, seed: int) -> None:
        self.temperature = temperature
        self.top_p = top_p
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        probs = torch.softmax(scores.float() / self.temperature, dim=-1).cpu()
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        keep = sorted_probs.cumsum(dim=-1) - sorted_probs < self.top_p
        sorted_probs = sorted_probs * keep
        choice = torch.multinomial(sorted_probs, 1, generator=self.generator)
        token = order.gather(-1, choice).to(scores.device)
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(-1, token, 0.0)


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
        if stream.schedule == "interleave" and not stream.stop_event.is_set():
            COMPUTE.yield_turn()
            stream._turn_start = time.perf_counter()  # time spent while others took their turn is not ours
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


class TokenStream:
    """Runs one greedy or seeded-sampling generation in a thread.

    Events go to `events` as (tag, stream, payload) with tag "token", "done" or
    "error"; `events` may be shared by several streams.
    """

    def __init__(self, model, input_ids: torch.Tensor, settings: GenerationSettings, *,
                 pad_token_id: int | None = None, events: queue.Queue | None = None,
                 schedule: str = "interleave", model_lock: threading.Lock | None = None,
                 keep_logits: bool = False, tag: Any = None) -> None:
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}.")
        self.model = model
        self.input_ids = input_ids
        self.settings = settings
        self.pad_token_id = pad_token_id
        self.events = events if events is not None else queue.Queue()
        self.schedule = schedule
        self.model_lock = model_lock  # threads: one generation at a time per model
        self.keep_logits = keep_logits
        self.tag = tag
        self.stop_event = threading.Event()
        self.finished = threading.Event()
        self.result = StreamResult()
        self._turn_start = 0.0

    def start(self) -> TokenStream:
        with _live_lock:
            _live.add(self)
        if self.schedule == "interleave":
            COMPUTE.spawn(self._run)
        else:
            threading.Thread(target=self._run, name=f"quantplay-generate-{self.tag}", daemon=True).start()
        return self

    def stop(self) -> None:
        self.stop_event.set()

    def join(self, timeout: float | None = None) -> bool:
        return self.finished.wait(timeout)

    def _push(self, tag: str, payload: Any) -> None:
        if tag == "token":
            self.result.token_ids.append(payload)
        self.events.put((tag, self, payload))

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
            if not self.stop_event.is_set():
                # Inference mode: interleaved greenlets get it from the compute thread's hub (its state
                # belongs to the thread, and greenlets entering it would restore it out of order).
                with torch.inference_mode() if self.schedule == "threads" else nullcontext():
                    out = self.model.generate(**kwargs)
                result.past_key_values = getattr(out, "past_key_values", None)
                if self.keep_logits and getattr(out, "logits", None):
                    result.logits = torch.stack([step[0] for step in out.logits]).float().cpu()
            result.stopped = self.stop_event.is_set()
            self._push("done", None)
        except BaseException as exc:  # surfaces in the consumer, never kills the process
            result.error = exc
            self._push("error", exc)
        finally:
            if locked:
                self.model_lock.release()
            with _live_lock:
                _live.discard(self)
            self.finished.set()


class IncrementalDecoder:
    """Detokenizes a growing id list without re-decoding it all each step.

    Decodes a short window (the last few ids) and emits only the new, complete
    characters; a multi-byte character split across tokens waits for its end.
    """

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.text = ""
        self._prefix = 0
        self._read = 0

    def add(self, token_id: int) -> str:
        self.ids.append(token_id)
        decode = self.tokenizer.decode
        before = decode(self.ids[self._prefix:self._read], skip_special_tokens=True)
        after = decode(self.ids[self._prefix:], skip_special_tokens=True)
        if len(after) > len(before) and not after.endswith("\ufffd"):
            new = after[len(before):]
            self._prefix, self._read = self._read, len(self.ids)
            self.text += new
            return new
        return ""

    def finish(self) -> str:
        """The exact full decode, identical to decoding all ids at once."""
        self.text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        return self.text
