"""The Compare and Stop handlers behind the page: one run per press, stoppable, never an error badge.

A run consumes the comparison in a worker thread and the handler yields from a queue, so the
page can show each column's own loading progress (the loader reports it through a callback
while it holds the admission lock, when the comparison itself yields nothing) and can answer
Stop at once. Stop sets this session's stop flag, kept here by gradio's session hash (not in
gr.State, which deep-copies): the comparison then ends its streams as "stopped" and scores
what they generated. A request that cannot run writes its message into the status line and
leaves every other output as it was.
"""

from __future__ import annotations

import itertools
import queue
import re
import threading
from collections.abc import Callable, Iterator
from typing import Any

import gradio as gr

from . import views

POLL_SECONDS = 0.2  # how soon a pressed Stop shows while nothing else arrives
STOPPED_LOADING = "stopped (its load finishes in the background and stays cached)"
_stops: dict[str, set[threading.Event]] = {}
_stops_lock = threading.Lock()
_anonymous = itertools.count()


def session_key(request: gr.Request | None) -> str:
    """The session a run belongs to; a call without a session (a test, a script) gets a key of its own."""
    key = getattr(request, "session_hash", None) if request is not None else None
    return key or f"anonymous-{next(_anonymous)}"


def begin(key: str) -> threading.Event:
    flag = threading.Event()
    with _stops_lock:
        _stops.setdefault(key, set()).add(flag)
    return flag


def end(key: str, flag: threading.Event) -> None:
    with _stops_lock:
        flags = _stops.get(key, set())
        flags.discard(flag)
        if not flags:
            _stops.pop(key, None)


def request_stop(request: gr.Request = None) -> None:  # a plain gr.Request: gradio passes none to `X | None`
    """Stop's handler: set the stop flag of every run of this session."""
    request_stop_key(session_key(request))


def request_stop_key(key: str) -> None:
    """Set the stop flag of every run begun under `key`."""
    with _stops_lock:
        flags = list(_stops.get(key, ()))
    for flag in flags:
        flag.set()


def running_sessions() -> int:
    with _stops_lock:
        return len(_stops)


def _pump(frames: Callable[[Callable[[float, str], None]], Iterator[dict]], inbox: queue.Queue) -> None:
    """The worker: every frame, progress message and error into `inbox`, then an end mark."""
    try:
        for frame in frames(lambda fraction, message: inbox.put(("progress", (fraction, message)))):
            inbox.put(("frame", frame))
    except gr.Error as exc:  # stream_frames turns every failure into one (already escaped, no traceback)
        inbox.put(("error", exc.message))
    finally:
        inbox.put(("end", None))


def _with_progress(frame: dict, fraction: float, message: str) -> dict:
    """`frame` with a loader's message on the column it names (a preset name in it), with that column's share."""
    names = [v["name"] for v in frame["variants"]]
    named = [i for i, name in enumerate(names) if re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", message)]
    i = named[0] if named else min(int(fraction * len(names)), len(names) - 1)
    if frame["variants"][i]["status"] != "loading":
        return frame
    share = fraction * len(names) - i
    text = f"{message} {share:.0%}" if 0 < share < 1 and "%" not in message else message
    variants = [dict(v, message=text) if j == i else v for j, v in enumerate(frame["variants"])]
    return dict(frame, variants=variants)


def _stopped_while_loading(frame: dict) -> dict:
    variants = [dict(v, status="stopped", message=STOPPED_LOADING) if v["status"] in ("loading", "generating") else v
                for v in frame["variants"]]
    return dict(frame, variants=variants, done=True)


def run_page(frames: Callable[[Callable[[float, str], None]], Iterator[dict]], render: Callable[[dict, dict | None], dict],
             status: Any, stop: threading.Event) -> Iterator[dict]:
    """Yield the page's updates for one run: frames as they come, loading progress per column, Stop at once."""
    inbox: queue.Queue = queue.Queue()
    threading.Thread(target=_pump, args=(frames, inbox), name="quantplay-page-run", daemon=True).start()
    latest = previous = None
    ended = False
    while not ended:
        items = []
        try:
            items.append(inbox.get(timeout=POLL_SECONDS))
            while True:
                items.append(inbox.get_nowait())
        except queue.Empty:
            pass
        for kind, payload in items:
            if kind == "end":
                ended = True
            elif kind == "error":
                yield {status: f"⚠ {payload}"}
            elif kind == "frame":
                latest = payload
            elif latest is None:  # fetching the model, before the first frame
                yield {status: f"Preparing… {views.esc(payload[1])}"}
            else:
                latest = _with_progress(latest, *payload)
        if latest is None:
            continue
        if stop.is_set() and not latest["done"]:
            if any(v["status"] == "loading" for v in latest["variants"]):
                yield render(_stopped_while_loading(latest), previous)
                return  # the worker finishes the loads and ends without generating
            if not latest.get("stopping"):
                latest = dict(latest, stopping=True)
        if latest is previous:
            continue
        yield render(latest, previous)
        previous = latest
