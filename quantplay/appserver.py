"""Serve app.py in a child process on a free port: for the benchmark's API figures and the tests."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_app(extra_env: dict | None = None, timeout: float = 180.0, log_dir: Path | None = None,
                launcher: Callable[[list[str]], list[str]] | None = None) -> Iterator[tuple[str, subprocess.Popen]]:
    """Start `python app.py` (analytics off), wait until it answers, stop it afterwards.

    From an installed copy (no app.py beside the package) it starts `python -m quantplay serve`, the same page.
    `launcher` turns the command into the one to run (the container test starts it inside a cgroup)."""
    port = free_port()
    env = dict(os.environ, GRADIO_SERVER_PORT=str(port), GRADIO_ANALYTICS_ENABLED="False",
               PYTHONUNBUFFERED="1", **(extra_env or {}))
    log = open(log_dir / f"app-{port}.log", "w") if log_dir else subprocess.DEVNULL
    app = ROOT / "app.py"
    command = [str(app)] if app.is_file() else ["-m", "quantplay", "serve"]
    command = [sys.executable, *command]
    proc = subprocess.Popen(launcher(command) if launcher else command, cwd=ROOT if app.is_file() else None, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(url, timeout=2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"app.py did not start (exit {proc.poll()})") from None
                time.sleep(0.5)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if log_dir:
            log.close()
