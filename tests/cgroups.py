"""Real cgroup v1 memory groups for tests: made under this process's own group, removed afterwards.

Creating one needs root and a mounted, writable v1 memory controller; where either is missing
the test is skipped with the reason. A child joins a group from its first instruction by running
`cgroup_exec.py TASKS_FILE COMMAND...`, which writes its own pid into the group and then execs.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from quantplay import resources

CONTROLLER = Path("/sys/fs/cgroup/memory")
EXEC = Path(__file__).with_name("cgroup_exec.py")


def own_memory_group() -> Path:
    """A writable place for a child group: this process's own v1 memory group, or skip with why."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("creating a memory cgroup needs root")
    if not (CONTROLLER / "memory.limit_in_bytes").exists():
        pytest.skip(f"cgroup v1's memory controller is not mounted at {CONTROLLER}")
    path = resources.cgroup_paths().get("memory", "/")
    own = CONTROLLER.joinpath(*[p for p in path.split("/") if p])
    return own if own.is_dir() else CONTROLLER


@contextlib.contextmanager
def memory_group(limit_bytes: int, name: str = "quantplay-test") -> Iterator[Path]:
    """A new v1 memory group limited to `limit_bytes` (skips where one cannot be made); removed on exit."""
    group = own_memory_group() / f"{name}-{os.getpid()}"
    try:
        group.mkdir()
    except OSError as exc:
        pytest.skip(f"cannot create a memory cgroup under {group.parent}: {exc}")
    try:
        (group / "memory.limit_in_bytes").write_text(str(limit_bytes))
        yield group
    finally:
        remove_group(group)


def remove_group(group: Path) -> None:
    for _ in range(50):  # a child's exit empties `tasks` a moment after wait() returns
        try:
            group.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.1)
    group.rmdir()


def command_in(group: Path, *argv: str) -> list[str]:
    """`python argv...` started inside `group` (its pid joins before anything else runs)."""
    return [sys.executable, str(EXEC), str(group / "tasks"), *argv]


def oom_kills(group: Path) -> int:
    """How many processes the kernel's OOM killer ended in `group` (memory.oom_control's oom_kill)."""
    for line in (group / "memory.oom_control").read_text().splitlines():
        if line.startswith("oom_kill "):
            return int(line.split()[1])
    return 0
