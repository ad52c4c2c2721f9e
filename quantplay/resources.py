"""The memory and CPUs this process may really use: the container's limits, not the host's.

Why: in Docker or on a Space, `/proc/meminfo`, `psutil` and `os.cpu_count()`
report the host, while the kernel kills the process at its cgroup's memory
limit. Measured: inside a 1.2 GiB memory cgroup, `/status` reported a 13.6 GiB
budget, because psutil read the host's `/proc/meminfo`; and a 2-vCPU container
on a 64-core host would start 64 OpenMP threads.

What it promises:
* `memory_limit()` reads the process's own cgroup from `/proc/self/cgroup`
  (v1 `memory.limit_in_bytes`, v2 `memory.max`), walks up the tree and keeps the
  smallest limit, with the file it came from and that group's usage. v1's
  "unlimited" (9223372036854771712) and v2's "max" are no limit.
* `memory_budget()` turns the configured budget (`QUANTPLAY_MEMORY_BUDGET`) into
  bytes: a fraction is taken of (limit − baseline RSS − headroom) under a
  container limit, else of available memory as before; a size is capped to
  that room, with a note.
* `cpu_count()` is the smallest of the CPU quota (v1 `cpu.cfs_quota_us` /
  `cpu.cfs_period_us`, v2 `cpu.max`, rounded up), the affinity mask and the
  host's count; `apply_torch_threads()` lowers torch's thread count to it, and
  `size_torch_threads()` does so for this process at start-up (app.py, the CLI),
  before the compute thread exists, logging a change.
* `Budget.summary()` says the budget, how it was reached and the limit in force:
  the loader's refusals quote it, so a refused request names the container's limit.

Headroom (`headroom_bytes`): max(256 MiB, 15% of the limit), for what the
budget does not count. The budget counts weights (and each load's peak); a
comparison also holds, per variant, its kept logits ([new tokens, vocab] fp32)
and KV cache, plus frames and gradio's buffers. Measured on SmolLM2-135M's
shapes (random weights, fp32, 64-token prompt, logits kept): +16 MiB over the
loaded model at 8 new tokens, +60 MiB at 128 (24 MiB of it logits). So 256 MiB
covers a 3–4-variant comparison of ~128 tokens; at the 512-token limit with 5
variants the logits alone reach ~480 MiB (5 × 96), which the 60% fraction's
share is left to absorb. 15% scales with the larger models a larger container
is for. A reasoned floor, not a worst case.

The pure functions take the `/proc` and `/sys/fs/cgroup` roots as parameters,
so tests point them at a fake tree; `describe()` and `process_memory_budget()`
read this process. It knows nothing about models or the UI, and imports nothing
of quantplay but `config`, so `metrics`, `loader` and the entry points can all use it.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil
import torch

from .config import Size

UNLIMITED = 2**60  # v1 writes "no limit" as 2**63 rounded down to a page; anything this big is none
HEADROOM_FLOOR = 256 * 2**20
HEADROOM_FRACTION = 0.15
HOST_SOURCE = "host available memory (/proc/meminfo)"
log = logging.getLogger(__name__)

_V1_MOUNTS = {"memory": ("memory",), "cpu": ("cpu", "cpu,cpuacct", "cpuacct,cpu")}
_V2_MOUNTS = ("", "unified")  # pure v2 at the root; hybrid systems mount it at unified/


@dataclass(frozen=True)
class Limit:
    """A memory limit in bytes, where it was read, and that group's usage when known."""

    bytes: int
    source: str
    usage_bytes: int | None = None


@dataclass(frozen=True)
class CpuLimit:
    count: int
    source: str


@dataclass(frozen=True)
class Budget:
    """The memory budget for loaded variants, and the figures it was made from."""

    bytes: int
    source: str  # how it was computed, for a person
    limit_bytes: int | None  # the container's limit; None when no cgroup limit is in force
    limit_source: str
    baseline_bytes: int
    headroom_bytes: int
    note: str = ""  # set when a configured size was capped

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def given(cls, budget_bytes: int, source: str) -> Budget:
        """A budget handed in by the caller (tests, the bench), not read from this process."""
        return cls(budget_bytes, source, None, "none read (the budget was given)", 0, 0)

    def summary(self) -> str:
        """The budget and how it was reached, naming the container's limit when one is in force."""
        text = f"{_mib(self.bytes)} ({self.source})"
        if self.limit_bytes is not None and self.limit_source not in self.source:
            text += f"; the container's memory limit is {_mib(self.limit_bytes)} ({self.limit_source})"
        return text


# -- cgroup files --------------------------------------------------------------
def cgroup_paths(proc_root: str | Path = "/proc") -> dict[str, str]:
    """Controller → cgroup path of this process; the v2 (unified) line is under "" ."""
    try:
        text = (Path(proc_root) / "self" / "cgroup").read_text()
    except OSError:
        return {}
    paths: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        for controller in parts[1].split(",") if parts[1] else [""]:
            paths[controller] = parts[2]
    return paths


def _group_dirs(controller_root: Path, path: str) -> list[Path]:
    """The process's group and its ancestors, leaf first, under one mounted hierarchy.

    In a container without its own cgroup namespace, /proc/self/cgroup names the
    host's path (/docker/<id>) while the mount shows the container's group at the
    root: the first suffix of the path that exists is taken as the leaf.
    """
    if not controller_root.is_dir():
        return []
    parts = [p for p in path.split("/") if p]
    leaf = next((controller_root.joinpath(*parts[i:]) for i in range(len(parts) + 1)
                 if controller_root.joinpath(*parts[i:]).is_dir()), controller_root)
    dirs = [leaf]
    while dirs[-1] != controller_root:
        dirs.append(dirs[-1].parent)
    return dirs


def _hierarchies(controller: str, proc_root: str | Path, cgroup_root: str | Path) -> list[tuple[str, list[Path]]]:
    """("v1"|"v2", group dirs leaf first) for each hierarchy that holds `controller` for this process."""
    paths, root, found = cgroup_paths(proc_root), Path(cgroup_root), []
    if controller in paths:
        for mount in _V1_MOUNTS[controller]:
            if (root / mount).is_dir():
                found.append(("v1", _group_dirs(root / mount, paths[controller])))
                break
    if "" in paths:
        for mount in _V2_MOUNTS:
            dirs = _group_dirs(root / mount if mount else root, paths[""])
            if dirs and (dirs[-1] / "cgroup.controllers").exists():
                found.append(("v2", dirs))
                break
    return found


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _read_int(path: Path) -> int | None:
    text = _read(path)
    try:
        return int(text) if text is not None else None
    except ValueError:  # "max" and other words: no number
        return None


# -- memory --------------------------------------------------------------------
_MEMORY_FILES = {"v1": ("memory.limit_in_bytes", "memory.usage_in_bytes"), "v2": ("memory.max", "memory.current")}


def memory_limit(proc_root: str | Path = "/proc", cgroup_root: str | Path = "/sys/fs/cgroup") -> Limit | None:
    """The smallest memory limit of this process's cgroup and its ancestors, or None."""
    best: Limit | None = None
    for version, dirs in _hierarchies("memory", proc_root, cgroup_root):
        limit_file, usage_file = _MEMORY_FILES[version]
        for group in dirs:
            value = _read_int(group / limit_file)
            if value is None or value >= UNLIMITED or (best is not None and value >= best.bytes):
                continue
            best = Limit(value, f"cgroup {version} {limit_file} ({group})", _read_int(group / usage_file))
    return best


def host_available_bytes() -> int:
    return int(psutil.virtual_memory().available)


def effective_memory(proc_root: str | Path = "/proc", cgroup_root: str | Path = "/sys/fs/cgroup",
                     available_bytes: int | None = None) -> Limit:
    """The cgroup's limit or the host's available memory, whichever leaves less room.

    The cgroup's room is its limit less its usage (when the kernel reports it).
    """
    available = host_available_bytes() if available_bytes is None else available_bytes
    limit = memory_limit(proc_root, cgroup_root)
    if limit is not None and limit.bytes - (limit.usage_bytes or 0) <= available:
        return limit
    return Limit(available, HOST_SOURCE)


def headroom_bytes(limit_bytes: int) -> int:
    """What the budget leaves for what it does not count (see the module docstring)."""
    return max(HEADROOM_FLOOR, int(HEADROOM_FRACTION * limit_bytes))


def _mib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if abs(n) >= 2**30 else f"{n / 2**20:.0f} MiB"


def memory_budget(config_budget: Size, baseline_bytes: int, limit: Limit | None, available_bytes: int,
                  headroom: int | None = None) -> Budget:
    """The budget for loaded variants, from the configured one and what this process may use.

    `baseline_bytes` is the process's own RSS before any model (code, tokenizers,
    gradio); `available_bytes` the host's available memory, which already
    excludes it. Under a container limit the room is (limit − baseline −
    headroom), or the host's available memory when that is smaller.
    """
    if limit is None:
        whole = available_bytes
        return Budget(config_budget.resolve(whole),
                      f"{config_budget} of {_mib(whole)} {HOST_SOURCE}" if config_budget.bytes is None
                      else f"{config_budget} as configured", None, HOST_SOURCE, baseline_bytes, 0)
    headroom = headroom_bytes(limit.bytes) if headroom is None else headroom
    room = max(0, limit.bytes - baseline_bytes - headroom)
    if available_bytes < room:
        room, of = available_bytes, f"{_mib(available_bytes)} {HOST_SOURCE}, less than the {limit.source} allows"
    else:
        of = (f"{_mib(room)}: the {limit.source} of {_mib(limit.bytes)} less this process's "
              f"{_mib(baseline_bytes)} and {_mib(headroom)} of headroom")
    if config_budget.bytes is None:
        return Budget(config_budget.resolve(room), f"{config_budget} of {of}", limit.bytes, limit.source,
                      baseline_bytes, headroom)
    if config_budget.bytes <= room:
        return Budget(config_budget.bytes, f"{config_budget} as configured", limit.bytes, limit.source,
                      baseline_bytes, headroom)
    note = f"QUANTPLAY_MEMORY_BUDGET={config_budget} is more than this container allows; capped to {of}"
    return Budget(room, f"capped to {of}", limit.bytes, limit.source, baseline_bytes, headroom, note)


def process_memory_budget(config_budget: Size, device: str = "cpu") -> Budget:
    """`memory_budget` for this process, now (call it before loading any model).

    On CUDA the budget is for VRAM, which no cgroup limits: a fraction of the free
    VRAM, as before.
    """
    if device.startswith("cuda"):
        free = int(torch.cuda.mem_get_info(torch.device(device))[0]) if torch.cuda.is_available() else 0
        return Budget(config_budget.resolve(free), f"{config_budget} of {_mib(free)} free on {device}",
                      None, f"free memory on {device} (torch.cuda.mem_get_info)", 0, 0)
    return memory_budget(config_budget, own_rss_bytes(), memory_limit(), host_available_bytes())


def own_rss_bytes() -> int:
    """This process's resident memory now: the baseline a budget under a container limit leaves out."""
    return psutil.Process().memory_info().rss


# -- CPUs ----------------------------------------------------------------------
def cpu_quota(proc_root: str | Path = "/proc", cgroup_root: str | Path = "/sys/fs/cgroup") -> CpuLimit | None:
    """CPUs the CFS quota allows (rounded up, at least 1), the smallest up the tree; None without a quota."""
    best: CpuLimit | None = None
    for version, dirs in _hierarchies("cpu", proc_root, cgroup_root):
        for group in dirs:
            if version == "v1":
                quota, period = _read_int(group / "cpu.cfs_quota_us"), _read_int(group / "cpu.cfs_period_us")
                source = f"cgroup v1 cpu.cfs_quota_us / cpu.cfs_period_us ({group})"
            else:
                fields = (_read(group / "cpu.max") or "").split()
                quota, period = (int(fields[0]), int(fields[1])) if len(fields) == 2 and fields[0].isdigit() \
                    else (None, None)
                source = f"cgroup v2 cpu.max ({group})"
            if not quota or not period or quota < 0 or period <= 0:  # v1 -1 and v2 "max": no quota
                continue
            count = max(1, math.ceil(quota / period))
            if best is None or count < best.count:
                best = CpuLimit(count, f"{source}: {quota}/{period}")
    return best


def _affinity() -> int | None:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on macOS / Windows
        return None


def cpu_count(proc_root: str | Path = "/proc", cgroup_root: str | Path = "/sys/fs/cgroup",
              affinity: int | None = None, host_count: int | None = None) -> CpuLimit:
    """The smallest of the CPU quota, the affinity mask and the host's CPU count."""
    affinity = _affinity() if affinity is None else affinity
    host_count = (os.cpu_count() or 1) if host_count is None else host_count
    candidates = [cpu_quota(proc_root, cgroup_root)]
    if affinity:
        candidates.append(CpuLimit(affinity, "CPU affinity (os.sched_getaffinity)"))
    candidates.append(CpuLimit(host_count, "host CPUs (os.cpu_count)"))
    return min((c for c in candidates if c is not None), key=lambda c: c.count)  # ties: the first, most specific


def size_torch_threads() -> dict[str, Any]:
    """At start-up, before the compute thread exists: torch's threads lowered to `cpu_count()`, logged when lowered."""
    done = apply_torch_threads(cpu_count())
    if done["changed"]:
        log.warning("torch threads lowered from %d to %d: %s", done["threads_before"], done["threads"],
                    done["cpu_source"])
    return done


def apply_torch_threads(limit: CpuLimit) -> dict[str, Any]:
    """Lower torch's intra-op thread count to `limit.count` when it is higher; say what was done."""
    before = torch.get_num_threads()
    if before > limit.count:
        torch.set_num_threads(limit.count)
    return {"threads_before": before, "threads": torch.get_num_threads(), "changed": before > limit.count,
            "cpu_source": limit.source}


# -- this process --------------------------------------------------------------
def describe(proc_root: str | Path = "/proc", cgroup_root: str | Path = "/sys/fs/cgroup") -> dict[str, Any]:
    """The limits in force and where they came from, for /status, `quantplay config` and results."""
    limit, total = memory_limit(proc_root, cgroup_root), int(psutil.virtual_memory().total)
    if limit is None or limit.bytes >= total:
        limit = Limit(total, "host memory, no smaller container limit (/proc/meminfo MemTotal)")
    cpus = cpu_count(proc_root, cgroup_root)
    return {"memory_limit_bytes": limit.bytes, "memory_limit_source": limit.source,
            "cpu_count": cpus.count, "cpu_source": cpus.source}


def config_rows(budget: Budget, described: dict[str, Any], vram: Budget | None = None) -> list[dict[str, str]]:
    """Rows in `Config.describe()`'s shape, for `quantplay config`: the limits in force and the budgets
    (RAM, and on a CUDA machine `vram`)."""
    gpu = [{"variable": "(VRAM budget)", "value": _mib(vram.bytes), "source": vram.source,
            "help": "what loaded variants may take on the GPU (QUANTPLAY_VRAM_BUDGET, resolved)"}] if vram else []
    return [
        {"variable": "(memory limit)", "value": _mib(described["memory_limit_bytes"]),
         "source": described["memory_limit_source"], "help": "what the kernel lets this process use"},
        {"variable": "(memory budget)", "value": _mib(budget.bytes), "source": budget.source,
         "help": budget.note or "what loaded variants may take in RAM (QUANTPLAY_MEMORY_BUDGET, resolved)"},
        *gpu,
        {"variable": "(CPUs)", "value": str(described["cpu_count"]), "source": described["cpu_source"],
         "help": "torch's thread count is lowered to this at start-up"},
    ]
