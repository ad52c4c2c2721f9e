"""Choosing the C allocator app.py re-executes itself with (the server's memory under many sessions)."""

import pytest

from quantplay import allocator

MAPS = """7f0000000000-7f0000001000 r-xp 00000000 00:00 1 /usr/lib/x86_64-linux-gnu/{lib}
7f0000002000-7f0000003000 rw-p 00000000 00:00 0
7f0000004000-7f0000005000 r-xp 00000000 00:00 2 /usr/lib/x86_64-linux-gnu/libc.so.6
"""


def finder(*present):
    return lambda name: f"lib{name}.so.2" if name in present else None


def test_auto_takes_the_first_preferred_library_the_linker_knows():
    assert allocator.choose(None, finder("jemalloc", "tcmalloc")) == "libjemalloc.so.2"
    assert allocator.choose("auto", finder("tcmalloc_minimal")) == "libtcmalloc_minimal.so.2"
    assert allocator.choose("auto", finder()) is None


def test_system_keeps_glibc_and_a_named_library_is_taken_as_given(tmp_path):
    assert allocator.choose("system", finder("jemalloc")) is None
    assert allocator.choose("libjemalloc.so.2", finder()) == "libjemalloc.so.2"
    lib = tmp_path / "libmine.so"
    lib.write_bytes(b"")
    assert allocator.choose(str(lib), finder()) == str(lib)
    with pytest.raises(ValueError, match="no such file"):
        allocator.choose(str(tmp_path / "missing.so"), finder())


def test_active_reads_the_mapped_libraries():
    assert allocator.active(MAPS.format(lib="libjemalloc.so.2")) == "jemalloc"
    assert allocator.active(MAPS.format(lib="libtcmalloc_minimal.so.4")) == "tcmalloc"
    assert allocator.active(MAPS.format(lib="libm.so.6")) == "system"


def test_use_preferred_reexecutes_once_with_the_library_preloaded(monkeypatch):
    monkeypatch.setattr(allocator, "active", lambda maps=None: "system")
    monkeypatch.setattr(allocator, "choose", lambda setting: None if setting == "system" else "libjemalloc.so.2")
    calls = []
    execv = lambda path, argv, env: calls.append((argv, env))  # noqa: E731
    allocator.use_preferred(["app.py"], {"LD_PRELOAD": "libother.so"}, execv)
    (argv, env), = calls
    assert argv[1:] == ["app.py"]
    assert env["LD_PRELOAD"] == "libjemalloc.so.2 libother.so" and env[allocator.MARKER] == "1"
    calls.clear()
    allocator.use_preferred(["app.py"], env, execv)  # the re-executed process: never again
    allocator.use_preferred(["app.py"], {allocator.ENV: "system"}, execv)
    assert calls == []
