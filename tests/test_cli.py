"""The command line as a script sees it: one `error:` line on stderr, a documented exit code, JSON that parses."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest

import quantplay
from quantplay.__main__ import EXIT_INTERRUPTED, EXIT_OS_ERROR, EXIT_OUT_OF_MEMORY, EXIT_REFUSED, build_parser, run
from quantplay.catalog import ModelUnavailable
from quantplay.errors import ConfigError, MemoryBudgetError, QuantplayError
from quantplay.streaming import GenerationSettings


def quantplay_cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "quantplay", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})


def assert_one_error_line(stderr: str, *fragments: str) -> str:
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    assert stderr.rstrip().splitlines()[-1] == errors[0]  # and it is the last word
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def test_a_budget_refusal_is_one_line_and_exit_3(tiny_dir, models_root):
    out = quantplay_cli("compare", "--model", str(tiny_dir), "--variants", "fp32,int8", "--prompt", "Hi",
                        "--max-new-tokens", "2", "--device-map", "cpu",
                        QUANTPLAY_MEMORY_BUDGET="64K", QUANTPLAY_MODEL_DIRS=str(models_root))
    assert out.returncode == EXIT_OUT_OF_MEMORY == 3, out.stderr[-2000:]
    assert_one_error_line(out.stderr, "memory budget", "QUANTPLAY_MEMORY_BUDGET")
    assert out.stdout == ""


def test_an_unknown_model_is_one_line_and_exit_2(models_root):
    missing = str(models_root / "no-such-model")
    out = quantplay_cli("compare", "--model", missing, "--prompt", "Hi", QUANTPLAY_MODEL_DIRS=str(models_root))
    assert out.returncode == EXIT_REFUSED == 2, out.stderr[-2000:]
    assert_one_error_line(out.stderr, repr(missing), "has no config.json")
    out = quantplay_cli("compare", "--model", "/elsewhere/model", "--prompt", "Hi",
                        QUANTPLAY_MODEL_DIRS=str(models_root))
    assert out.returncode == 2
    assert_one_error_line(out.stderr, "QUANTPLAY_MODEL_DIRS")


def test_a_malformed_setting_is_one_line_and_exit_2():
    out = quantplay_cli("models", QUANTPLAY_MEMORY_BUDGET="1000")
    assert out.returncode == 2
    assert_one_error_line(out.stderr, "QUANTPLAY_MEMORY_BUDGET='1000'")


def test_version():
    out = quantplay_cli("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"quantplay {quantplay.__version__}"


def test_models_json_parses_and_lists_local_models(tiny_dir, models_root):
    out = quantplay_cli("models", "--json", QUANTPLAY_MODEL_DIRS=str(models_root))
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert {"name": str(tiny_dir), "description": "local directory"} in rows
    assert all(set(row) == {"name", "description"} for row in rows)


def test_cache_list_json_parses(tmp_path):
    out = quantplay_cli("cache", "list", "--json", QUANTPLAY_CACHE_DIR=str(tmp_path), QUANTPLAY_DISK_CACHE_LIMIT="1GiB")
    assert out.returncode == 0, out.stderr
    listed = json.loads(out.stdout)
    assert listed == {"root": str(tmp_path / "quantized"), "limit_bytes": 2**30, "entries": []}


@pytest.mark.parametrize("exc, code, shown", [
    (ModelUnavailable("no such model\nsecond line"), EXIT_REFUSED, "error: no such model second line"),
    (ConfigError("QUANTPLAY_X='y': use 1/0"), EXIT_REFUSED, "error: QUANTPLAY_X='y': use 1/0"),
    (MemoryBudgetError("needs 9 GiB"), EXIT_OUT_OF_MEMORY, "error: needs 9 GiB"),
    (MemoryError(), EXIT_OUT_OF_MEMORY, "error: out of memory:"),
    (PermissionError(13, "Permission denied", "/cache"), EXIT_OS_ERROR, "error: [Errno 13] Permission denied: '/cache'"),
    (KeyboardInterrupt(), EXIT_INTERRUPTED, "error: interrupted"),
])
def test_every_failure_has_its_exit_code_and_one_line(exc, code, shown, capsys):
    def command(args):
        raise exc

    assert run(argparse.Namespace(func=command)) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(shown), err


def test_a_bug_still_shows_its_traceback():
    def command(args):
        raise TypeError("a bug")

    with pytest.raises(TypeError):
        run(argparse.Namespace(func=command))


def test_compare_defaults_are_the_apis():
    args = build_parser().parse_args(["compare", "--prompt", "Hi"])
    from_cli = GenerationSettings.from_request(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                               top_p=args.top_p, seed=args.seed,
                                               chat_template=not args.no_chat_template)
    assert from_cli == GenerationSettings.from_request(max_new_tokens=64)
    assert not from_cli.do_sample and from_cli.top_p == 1.0
    sampled = build_parser().parse_args(["compare", "--prompt", "Hi", "--temperature", "0.8"])
    assert (sampled.temperature, sampled.top_p) == (0.8, 1.0)
    assert issubclass(ModelUnavailable, QuantplayError) and issubclass(MemoryBudgetError, QuantplayError)
