"""resources: container limits read from fake /proc and /sys/fs/cgroup trees, and once from a real
cgroup v1 memory group (root only; skipped with the reason elsewhere)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cgroups import memory_group

from quantplay import resources
from quantplay.config import Size
from quantplay.resources import CpuLimit, Limit

GiB, MiB = 2**30, 2**20
V1_UNLIMITED = "9223372036854771712"
ROOT = Path(__file__).resolve().parents[1]


def tree(tmp_path: Path, cgroup: str, files: dict[str, str]) -> tuple[Path, Path]:
    """A fake /proc (its self/cgroup) and /sys/fs/cgroup holding `files` (relative path -> content)."""
    proc, cg = tmp_path / "proc", tmp_path / "cgroup"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "cgroup").write_text(cgroup)
    cg.mkdir()
    for rel, text in files.items():
        (cg / rel).parent.mkdir(parents=True, exist_ok=True)
        (cg / rel).write_text(text + "\n")
    return proc, cg


# -- memory limit ---------------------------------------------------------------
def test_v1_limit_of_the_leaf_with_its_usage(tmp_path):
    proc, cg = tree(tmp_path, "5:cpu,cpuacct:/\n4:memory:/docker/abc\n0::/\n", {
        "memory/memory.limit_in_bytes": V1_UNLIMITED,
        "memory/docker/memory.limit_in_bytes": V1_UNLIMITED,
        "memory/docker/abc/memory.limit_in_bytes": str(1288486912),
        "memory/docker/abc/memory.usage_in_bytes": str(300 * MiB)})
    limit = resources.memory_limit(proc, cg)
    assert limit == Limit(1288486912, f"cgroup v1 memory.limit_in_bytes ({cg / 'memory/docker/abc'})", 300 * MiB)


def test_smallest_limit_up_the_tree_wins(tmp_path):
    proc, cg = tree(tmp_path, "4:memory:/outer/inner\n", {
        "memory/memory.limit_in_bytes": V1_UNLIMITED,
        "memory/outer/memory.limit_in_bytes": str(GiB),
        "memory/outer/memory.usage_in_bytes": str(10 * MiB),
        "memory/outer/inner/memory.limit_in_bytes": str(2 * GiB)})
    limit = resources.memory_limit(proc, cg)
    assert limit.bytes == GiB and limit.source.endswith(f"({cg / 'memory/outer'})") and limit.usage_bytes == 10 * MiB


def test_v2_memory_max_walks_up_and_max_is_no_limit(tmp_path):
    proc, cg = tree(tmp_path, "0::/user.slice/app\n", {
        "cgroup.controllers": "cpu memory",
        "user.slice/memory.max": str(3 * GiB),
        "user.slice/app/memory.max": "max",
        "user.slice/app/memory.current": str(5 * MiB)})
    assert resources.memory_limit(proc, cg) == Limit(3 * GiB, f"cgroup v2 memory.max ({cg / 'user.slice'})", None)
    (cg / "user.slice/memory.max").write_text("max\n")
    assert resources.memory_limit(proc, cg) is None


def test_v2_leaf_limit_with_usage(tmp_path):
    proc, cg = tree(tmp_path, "0::/app\n", {"cgroup.controllers": "memory", "app/memory.max": str(512 * MiB),
                                             "app/memory.current": str(7 * MiB)})
    assert resources.memory_limit(proc, cg) == Limit(512 * MiB, f"cgroup v2 memory.max ({cg / 'app'})", 7 * MiB)


def test_v1_unlimited_everywhere_is_none(tmp_path):
    proc, cg = tree(tmp_path, "4:memory:/a\n", {"memory/memory.limit_in_bytes": V1_UNLIMITED,
                                                 "memory/a/memory.limit_in_bytes": V1_UNLIMITED})
    assert resources.memory_limit(proc, cg) is None


@pytest.mark.parametrize("cgroup, files", [
    (None, {}),  # no /proc/self/cgroup (not Linux, or /proc not mounted)
    ("4:memory:/a\n", {}),  # no memory hierarchy mounted
    ("4:memory:/a\n", {"memory/a/memory.stat": "cache 0"}),  # the group without a limit file
    ("0::/a\n", {"a/memory.max": str(GiB)}),  # not a cgroup2 mount (no cgroup.controllers)
    ("garbage\n4:memory:/a\n", {"memory/a/memory.limit_in_bytes": "not a number"}),
])
def test_missing_or_unreadable_files_are_no_limit(tmp_path, cgroup, files):
    proc, cg = tree(tmp_path, cgroup or "", files)
    if cgroup is None:
        (proc / "self" / "cgroup").unlink()
    assert resources.memory_limit(proc, cg) is None


def test_container_mount_shows_its_own_group_at_the_root(tmp_path):
    """Docker without a cgroup namespace: /proc/self/cgroup names /docker/<id>, the mount is that group."""
    proc, cg = tree(tmp_path, "4:memory:/docker/abc\n", {"memory/memory.limit_in_bytes": str(GiB)})
    assert resources.memory_limit(proc, cg) == Limit(GiB, f"cgroup v1 memory.limit_in_bytes ({cg / 'memory'})")


def test_hybrid_v1_memory_with_a_unified_mount_without_memory(tmp_path):
    proc, cg = tree(tmp_path, "4:memory:/a\n0::/\n", {
        "memory/a/memory.limit_in_bytes": str(GiB), "unified/cgroup.controllers": "", "unified/cpu.stat": ""})
    assert resources.memory_limit(proc, cg).bytes == GiB


def test_effective_memory_is_whichever_leaves_less_room(tmp_path):
    proc, cg = tree(tmp_path, "4:memory:/a\n", {"memory/a/memory.limit_in_bytes": str(GiB),
                                                 "memory/a/memory.usage_in_bytes": str(200 * MiB)})
    assert resources.effective_memory(proc, cg, available_bytes=13 * GiB).bytes == GiB
    host = resources.effective_memory(proc, cg, available_bytes=700 * MiB)  # less than 1 GiB − 200 MiB
    assert host == Limit(700 * MiB, resources.HOST_SOURCE)
    (cg / "memory/a/memory.limit_in_bytes").write_text(V1_UNLIMITED)
    assert resources.effective_memory(proc, cg, available_bytes=13 * GiB).source == resources.HOST_SOURCE


# -- budget -----------------------------------------------------------------------
LIMIT_1_2 = Limit(int(1.2 * GiB), "cgroup v1 memory.limit_in_bytes (/sys/fs/cgroup/memory/quantplay-test)")


def test_fraction_is_of_the_limit_less_baseline_and_headroom():
    budget = resources.memory_budget(Size(fraction=0.6), 300 * MiB, LIMIT_1_2, available_bytes=13 * GiB)
    assert budget.headroom_bytes == 256 * MiB  # 15% of 1.2 GiB is less than the floor
    assert budget.bytes == int(0.6 * (LIMIT_1_2.bytes - 300 * MiB - 256 * MiB)) < LIMIT_1_2.bytes
    assert budget.limit_bytes == LIMIT_1_2.bytes and budget.limit_source == LIMIT_1_2.source
    assert LIMIT_1_2.source in budget.source and budget.note == ""


def test_headroom_scales_with_a_large_limit():
    assert resources.headroom_bytes(16 * GiB) == int(0.15 * 16 * GiB)
    assert resources.headroom_bytes(GiB) == 256 * MiB


def test_a_size_is_capped_to_the_room_with_a_note():
    capped = resources.memory_budget(Size(bytes=4 * GiB), 300 * MiB, LIMIT_1_2, 13 * GiB, headroom=100 * MiB)
    assert capped.bytes == LIMIT_1_2.bytes - 400 * MiB
    assert "QUANTPLAY_MEMORY_BUDGET=4.00 GiB" in capped.note and "capped" in capped.source
    kept = resources.memory_budget(Size(bytes=200 * MiB), 300 * MiB, LIMIT_1_2, 13 * GiB)
    assert kept.bytes == 200 * MiB and kept.note == ""


def test_without_a_container_limit_the_budget_is_as_before():
    budget = resources.memory_budget(Size(fraction=0.6), 300 * MiB, None, available_bytes=10 * GiB)
    assert budget.bytes == Size(fraction=0.6).resolve(10 * GiB) and budget.limit_bytes is None
    assert resources.HOST_SOURCE in budget.source
    assert resources.memory_budget(Size(bytes=32 * GiB), 0, None, 10 * GiB).bytes == 32 * GiB  # a size is trusted


def test_a_host_tighter_than_the_container_is_what_counts():
    budget = resources.memory_budget(Size(fraction=0.5), 100 * MiB, Limit(8 * GiB, "cgroup"), available_bytes=GiB)
    assert budget.bytes == GiB // 2 and resources.HOST_SOURCE in budget.source


def test_a_baseline_above_the_limit_leaves_no_budget():
    assert resources.memory_budget(Size(fraction=0.6), 2 * GiB, LIMIT_1_2, 13 * GiB).bytes == 0


# -- CPUs -------------------------------------------------------------------------
def test_v1_quota_under_a_joint_cpu_cpuacct_mount_rounds_up(tmp_path):
    proc, cg = tree(tmp_path, "3:cpu,cpuacct:/docker/abc\n", {
        "cpu,cpuacct/cpu.cfs_quota_us": "-1", "cpu,cpuacct/cpu.cfs_period_us": "100000",
        "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "150000", "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000"})
    limit = resources.cpu_count(proc, cg, affinity=64, host_count=64)
    assert limit.count == 2 and limit.source.startswith("cgroup v1 cpu.cfs_quota_us") and "150000/100000" in limit.source


def test_v1_no_quota_falls_back_to_the_host(tmp_path):
    proc, cg = tree(tmp_path, "1:cpu:/\n", {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"})
    assert resources.cpu_count(proc, cg, affinity=64, host_count=64) == CpuLimit(64, "CPU affinity (os.sched_getaffinity)")
    assert resources.cpu_count(proc, cg, affinity=0, host_count=8) == CpuLimit(8, "host CPUs (os.cpu_count)")


@pytest.mark.parametrize("cpu_max, expected", [("200000 100000", 2), ("50000 100000", 1), ("max 100000", None)])
def test_v2_cpu_max(tmp_path, cpu_max, expected):
    proc, cg = tree(tmp_path, "0::/app\n", {"cgroup.controllers": "cpu", "app/cpu.max": cpu_max})
    quota = resources.cpu_quota(proc, cg)
    assert (quota and quota.count) == expected
    if expected:
        assert quota.source.startswith(f"cgroup v2 cpu.max ({cg / 'app'})")


def test_affinity_smaller_than_the_quota_wins(tmp_path):
    proc, cg = tree(tmp_path, "0::/app\n", {"cgroup.controllers": "cpu", "app/cpu.max": "400000 100000"})
    assert resources.cpu_count(proc, cg, affinity=2, host_count=64) == CpuLimit(2, "CPU affinity (os.sched_getaffinity)")


def test_apply_torch_threads_only_lowers():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        done = resources.apply_torch_threads(CpuLimit(1, "cgroup v2 cpu.max (x)"))
        assert torch.get_num_threads() == 1 and done["changed"] and done["threads_before"] == 2
        done = resources.apply_torch_threads(CpuLimit(64, "host CPUs (os.cpu_count)"))
        assert torch.get_num_threads() == 1 and not done["changed"]
    finally:
        torch.set_num_threads(before)


# -- this process -------------------------------------------------------------------
def test_describe_names_the_limit_and_its_source(tmp_path):
    proc, cg = tree(tmp_path, "4:memory:/a\n0::/a\n", {"memory/a/memory.limit_in_bytes": str(GiB),
                                                        "cgroup.controllers": "cpu", "a/cpu.max": "100000 100000"})
    assert resources.describe(proc, cg) == {
        "memory_limit_bytes": GiB, "memory_limit_source": f"cgroup v1 memory.limit_in_bytes ({cg / 'memory/a'})",
        "cpu_count": 1, "cpu_source": f"cgroup v2 cpu.max ({cg / 'a'}): 100000/100000"}
    real = resources.describe()
    assert real["memory_limit_bytes"] > 0 and real["memory_limit_source"] and real["cpu_count"] >= 1


# -- a real cgroup v1 memory group ---------------------------------------------------
@pytest.mark.slow
def test_inside_a_real_1_2_gib_memory_cgroup():
    with memory_group(int(1.2 * GiB)) as group:
        written = int((group / "memory.limit_in_bytes").read_text())  # the kernel rounds down to a page
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        run = subprocess.run([sys.executable, str(ROOT / "tests" / "cgroup_probe.py"), str(group / "tasks")],
                             capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-2000:]
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert abs(written - 1.2 * GiB) < 4096
    assert seen["limit"]["bytes"] == written
    assert seen["limit"]["source"] == f"cgroup v1 memory.limit_in_bytes ({group})"
    assert 0 < seen["limit"]["usage"] < written
    budget = seen["budget"]
    assert 0 < budget["bytes"] < written and budget["limit_bytes"] == written
    assert budget["bytes"] == int(0.6 * (written - budget["baseline_bytes"] - budget["headroom_bytes"]))
    assert seen["capped"]["bytes"] < written and "QUANTPLAY_MEMORY_BUDGET=4.00 GiB" in seen["capped"]["note"]
    assert seen["describe"]["memory_limit_bytes"] == written and str(group) in seen["describe"]["memory_limit_source"]


def test_config_rows_show_the_limit_the_budget_and_the_cpus():
    budget = resources.memory_budget(Size(bytes=4 * GiB), 300 * MiB, LIMIT_1_2, 13 * GiB, headroom=100 * MiB)
    described = {"memory_limit_bytes": LIMIT_1_2.bytes, "memory_limit_source": LIMIT_1_2.source,
                 "cpu_count": 2, "cpu_source": "cgroup v2 cpu.max (x): 200000/100000"}
    limit, budget_row, cpus = resources.config_rows(budget, described)
    assert (limit["value"], limit["source"]) == ("1.20 GiB", LIMIT_1_2.source)
    assert budget_row["value"] == "829 MiB" and budget_row["help"] == budget.note
    assert (cpus["value"], cpus["source"]) == ("2", described["cpu_source"])
    # on a CUDA machine the VRAM budget comes between them (`quantplay config`)
    vram = resources.Budget(18 * GiB, "0.9 of 20480 MiB free on cuda:0", None, "free memory on cuda:0", 0, 0)
    rows = resources.config_rows(budget, described, vram)
    assert [r["variable"] for r in rows] == ["(memory limit)", "(memory budget)", "(VRAM budget)", "(CPUs)"]
    assert (rows[2]["value"], rows[2]["source"]) == ("18.00 GiB", vram.source)


def test_a_budget_summary_names_the_limit_once():
    under = resources.memory_budget(Size(fraction=0.6), 300 * MiB, LIMIT_1_2, 13 * GiB)
    assert under.summary() == f"{under.bytes / MiB:.0f} MiB ({under.source})" and LIMIT_1_2.source in under.source
    sized = resources.memory_budget(Size(bytes=200 * MiB), 300 * MiB, LIMIT_1_2, 13 * GiB)
    assert sized.summary() == f"200 MiB (200 MiB as configured); the container's memory limit is 1.20 GiB " \
                              f"({LIMIT_1_2.source})"
    assert resources.Budget.given(GiB, "given to ModelCache").summary() == "1.00 GiB (given to ModelCache)"


def test_size_torch_threads_logs_only_a_change(monkeypatch, caplog):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        monkeypatch.setattr(resources, "cpu_count", lambda: CpuLimit(1, "cgroup v2 cpu.max (x): 100000/100000"))
        with caplog.at_level("WARNING", logger="quantplay.resources"):
            assert resources.size_torch_threads()["threads"] == 1
            resources.size_torch_threads()
        assert caplog.messages == ["torch threads lowered from 2 to 1: cgroup v2 cpu.max (x): 100000/100000"]
    finally:
        torch.set_num_threads(before)
