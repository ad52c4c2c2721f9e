"""One OS thread for every torch operation, and greenlets to interleave generations on it.

Why: torch's CPU kernels run on an OpenMP team per calling thread, and GNU
OpenMP stops spin-waiting once a process has more OpenMP threads than cores.
Measured on a 2-core machine: `generate` on a second Python thread, after the
first had used torch, ran 1.8x slower than on the first. So quantplay sends
loads, generations and scoring to a single compute thread, and runs N
`model.generate` calls on it as greenlets that hand over after every token:
the columns fill together, and each forward pass has the whole machine.
(docs/benchmarks.md, "Concurrency on this CPU", has the measurements.)

It knows nothing about models; it runs callables.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from greenlet import greenlet

log = logging.getLogger(__name__)


class ComputeThread:
    def __init__(self, name: str = "quantplay-compute") -> None:
        self.name = name
        self._cond = threading.Condition()
        self._jobs: deque[tuple[Callable[[], Any], Future]] = deque()
        self._spawned: deque[Callable[[], None]] = deque()
        self._thread: threading.Thread | None = None
        self._hub: greenlet | None = None

    def _start(self) -> None:
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
                self._thread.start()

    def on_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run fn on the compute thread and return its result (or raise its exception)."""
        if self.on_thread():
            return fn(*args, **kwargs)
        self._start()
        future: Future = Future()
        with self._cond:
            self._jobs.append((lambda: fn(*args, **kwargs), future))
            self._cond.notify()
        return future.result()

    def spawn(self, run: Callable[[], None]) -> None:
        """Run `run` as a greenlet on the compute thread; it calls `yield_turn()` to let others go."""
        self._start()
        with self._cond:
            self._spawned.append(run)
            self._cond.notify()

    def yield_turn(self) -> None:
        """From inside a spawned greenlet: pause here until every other one has had a turn."""
        if self._hub is not None and greenlet.getcurrent() is not self._hub:
            self._hub.switch()

    def _loop(self) -> None:
        import torch

        torch.set_grad_enabled(False)  # every greenlet shares this thread's grad mode: keep it off
        self._hub = greenlet.getcurrent()
        running: deque[greenlet] = deque()
        while True:
            with self._cond:
                while not (self._jobs or self._spawned or running):
                    self._cond.wait()
                jobs = list(self._jobs)
                self._jobs.clear()
                spawned = list(self._spawned)
                self._spawned.clear()
            self._run_jobs(jobs)
            del jobs  # nothing of a finished job (a model, say) may stay referenced from this frame
            running.extend(greenlet(_guarded(run), parent=self._hub) for run in spawned)
            del spawned
            # Turns run in inference mode (faster per token than the no_grad generate() sets: docs/benchmarks.md).
            # The hub holds it around the round: a greenlet entering it itself would be restored out of order.
            with torch.inference_mode():
                for _ in range(len(running)):  # one turn each, round robin
                    g = running.popleft()
                    g.switch()
                    if not g.dead:
                        running.append(g)
                    del g

    @staticmethod
    def _run_jobs(jobs: list[tuple[Callable[[], Any], Future]]) -> None:
        while jobs:
            job, future = jobs.pop(0)
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(job())
                except BaseException as exc:  # handed to the caller
                    future.set_exception(exc)


def _guarded(run: Callable[[], None]) -> Callable[[], None]:
    def guarded() -> None:
        try:
            run()
        except BaseException:  # a greenlet's error must not end the loop; `run` reports its own
            log.exception("a spawned task failed")

    return guarded


COMPUTE = ComputeThread()
