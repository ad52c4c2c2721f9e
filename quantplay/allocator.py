"""The C allocator the server runs on: jemalloc (or tcmalloc) when the machine has one.

Why: bitsandbytes on CPU turns every quantized weight back into a float copy on
each matmul (a few MB, freed at once), while each generation's KV cache grows a
little per token. With many generations interleaved, glibc's malloc places the
small long-lived blocks in the holes the big ones leave, and its arenas grow
without bound. Measured on this 2-core machine, 8 sessions for 40 s in one
process: 250 MiB live at most, 1.3 GiB held by glibc (1.6 GiB peak RSS above
the start); under jemalloc or tcmalloc, 0.55 GiB peak RSS above the start, at
the same speed. See docs/benchmarks.md.

A running process cannot swap its malloc, so `app.py` calls `use_preferred()`
first: it re-executes the same command with the library in LD_PRELOAD, once.
QUANTPLAY_MALLOC chooses: "auto" (default: the first of PREFERRED that the
dynamic linker knows), "system" (leave glibc's malloc), or a library name/path.
"""

from __future__ import annotations

import ctypes.util
import functools
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

PREFERRED = ("jemalloc", "tcmalloc_minimal", "tcmalloc")
ENV = "QUANTPLAY_MALLOC"
MARKER = "QUANTPLAY_MALLOC_REEXEC"  # set in the re-executed process: never loop
KNOWN = ("jemalloc", "tcmalloc")  # what `active()` reports, found in the mapped libraries' file names


def choose(setting: str | None, find: Callable[[str], str | None] = ctypes.util.find_library) -> str | None:
    """The library to preload for a QUANTPLAY_MALLOC value, or None to keep the system's malloc."""
    setting = (setting or "auto").strip()
    if setting.lower() == "system":
        return None
    if setting.lower() == "auto":
        for name in PREFERRED:
            found = find(name)
            if found:
                return found
        return None
    if "/" in setting and not Path(setting).is_file():
        raise ValueError(f"{ENV}={setting}: no such file.")
    return setting  # a soname such as libjemalloc.so.2, or a path


def active(maps: str | None = None) -> str:
    """Which malloc this process runs on (or the one `maps` describes): 'jemalloc', 'tcmalloc' or 'system'."""
    if maps is None:
        return _this_process()
    libraries = {Path(line.split()[-1]).name for line in maps.splitlines() if "/" in line}
    for name in KNOWN:
        if any(name in lib for lib in libraries):
            return name
    return "system"


@functools.cache
def _this_process() -> str:
    """`active()` for this process: read once, since a process keeps the malloc it started with."""
    try:
        return active(Path("/proc/self/maps").read_text())
    except OSError:
        return "system"


def use_preferred(argv: list[str] | None = None, environ: dict[str, str] | None = None,
                  execv: Callable[[str, list[str], dict[str, str]], None] = os.execve) -> str:
    """Re-execute this command with a preferred malloc preloaded; returns (in the final process) which one runs.

    Does nothing on other platforms than Linux, when QUANTPLAY_MALLOC=system, when one already
    runs, or when no library is found (the server then works on glibc's malloc, with more memory).
    """
    environ = os.environ if environ is None else environ
    if not sys.platform.startswith("linux"):
        return "system"
    current = active()
    if current != "system" or environ.get(MARKER):
        if current == "system" and environ.get(ENV, "auto").lower() != "system":
            log.warning("%s=%s: the library did not load (see the dynamic linker's message above); "
                        "running on the system malloc.", ENV, environ.get(ENV, "auto"))
        return current
    library = choose(environ.get(ENV))
    if library is None:
        if environ.get(ENV, "auto").lower() == "auto":
            log.warning("No jemalloc or tcmalloc found: running on glibc's malloc, which holds more memory "
                        "under many sessions (apt-get install libjemalloc2; see README).")
        return "system"
    preload = " ".join(p for p in (library, environ.get("LD_PRELOAD", "")) if p)
    argv = list(sys.orig_argv[1:] if argv is None else argv)
    execv(sys.executable, [sys.executable, *argv], {**environ, "LD_PRELOAD": preload, MARKER: "1"})
    return current  # only reached when execv is a stand-in (tests)
