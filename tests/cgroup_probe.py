"""Run by test_resources: join the memory cgroup whose `tasks` file is argv[1], then print
what quantplay.resources reads from inside it, as JSON."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

with open(sys.argv[1], "w") as tasks:
    tasks.write(str(os.getpid()))

from quantplay import resources  # noqa: E402  (imported inside the group, so its pages count there)
from quantplay.config import parse_size  # noqa: E402

limit = resources.memory_limit()
print(json.dumps({
    "cgroup": resources.cgroup_paths().get("memory"),
    "limit": None if limit is None else {"bytes": limit.bytes, "source": limit.source, "usage": limit.usage_bytes},
    "budget": resources.process_memory_budget(parse_size("60%")).to_dict(),
    "capped": resources.process_memory_budget(parse_size("4GiB")).to_dict(),
    "describe": resources.describe(),
    "leaf": str(Path(sys.argv[1]).parent),
}))
