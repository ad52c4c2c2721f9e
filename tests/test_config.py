"""Settings are read once, in config.py: accepted forms, start-up errors, sources, `quantplay config`."""

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from server import child_env

from quantplay import config as qconfig
from quantplay.config import VARIABLES, Config, Limits, Size, parse_size
from quantplay.errors import ConfigError, QuantplayError

ROOT = Path(__file__).resolve().parents[1]
SIZES = "a size with a unit ('4GiB', '4000MB', '512M') or a fraction ('0.6' or '60%')"
WHOLE = "use a whole number of at least 1"
SWITCH = "use 1/0, true/false, yes/no or on/off"
PORT = "use a port number from 1 to 65535"

MALFORMED = [  # (variable, value, what the message must say is accepted)
    ("QUANTPLAY_MAX_NEW_TOKENS", "abc", WHOLE),
    ("QUANTPLAY_MAX_NEW_TOKENS", "0", WHOLE),
    ("QUANTPLAY_MAX_PROMPT_CHARS", "4k", WHOLE),
    ("QUANTPLAY_MAX_PROMPT_TOKENS", "-5", WHOLE),
    ("QUANTPLAY_MAX_VARIANTS", "2.5", WHOLE),
    ("QUANTPLAY_MAX_SESSIONS", "", WHOLE),
    ("QUANTPLAY_MAX_BATCH", "0", WHOLE),
    ("QUANTPLAY_QUEUE_SIZE", "many", WHOLE),
    ("QUANTPLAY_MEMORY_BUDGET", "1000", "a bare number is read as a fraction"),
    ("QUANTPLAY_MEMORY_BUDGET", "12XB", SIZES),
    ("QUANTPLAY_MEMORY_BUDGET", "4GiB%", SIZES),
    ("QUANTPLAY_MEMORY_BUDGET", "150%", "a bare number is read as a fraction"),
    ("QUANTPLAY_MEMORY_BUDGET", "0", "a bare number is read as a fraction"),
    ("QUANTPLAY_MEMORY_BUDGET", "", SIZES),
    ("QUANTPLAY_VRAM_BUDGET", "24", "a bare number is read as a fraction"),
    ("QUANTPLAY_DISK_CACHE_LIMIT", "1000", "a bare number is read as a fraction"),
    ("QUANTPLAY_DISK_CACHE_LIMIT", "lots", SIZES),
    ("QUANTPLAY_TRUST_REMOTE_CODE", "maybe", SWITCH),
    ("QUANTPLAY_SHARE", "2", SWITCH),
    ("GRADIO_SERVER_PORT", "70000", PORT),
    ("GRADIO_SERVER_PORT", "http", WHOLE),
    ("GRADIO_SERVER_PORT", "0", WHOLE),
]
FREE_TEXT = {"QUANTPLAY_CACHE_DIR", "QUANTPLAY_MODEL_DIRS", "QUANTPLAY_PRELOAD", "GRADIO_SERVER_NAME", "SPACE_ID"}


@pytest.mark.parametrize("name, value, accepted", MALFORMED)
def test_a_malformed_value_names_the_variable_and_the_accepted_forms(name, value, accepted):
    with pytest.raises(ConfigError) as info:
        Config.from_mapping({name: value})
    message = str(info.value)
    assert message.startswith(f"{name}={value!r}")
    assert accepted in message


def test_every_variable_with_a_form_has_a_malformed_case():
    """A new variable needs a line in MALFORMED (or is free text, which nothing can make malformed)."""
    named = {var.name for var in VARIABLES}
    assert {name for name, _, _ in MALFORMED} == named - FREE_TEXT
    assert FREE_TEXT <= named


def test_a_bare_number_above_1_suggests_a_unit():
    with pytest.raises(ConfigError, match=re.escape("give a unit, e.g. '1000MB'")):
        parse_size("1000", "QUANTPLAY_MEMORY_BUDGET")


def test_config_errors_are_the_one_error_type():
    assert issubclass(ConfigError, QuantplayError) and issubclass(ConfigError, ValueError)


@pytest.mark.parametrize("text, expected", [
    ("4GiB", 4 * 2**30), ("4000MB", 4 * 10**9), ("512M", 512 * 2**20), ("4gb", 4 * 10**9), ("4GB", 4 * 10**9),
    ("4 G", 4 * 2**30), ("1.5GiB", 3 * 2**29), ("100kb", 10**5), ("2048B", 2048), ("1t", 2**40),
])
def test_sizes_take_a_unit(text, expected):
    assert parse_size(text) == Size(bytes=expected)
    assert Config.from_mapping({"QUANTPLAY_MEMORY_BUDGET": text}).memory_budget.resolve(10**15) == expected


@pytest.mark.parametrize("text", ["0.6", "60%", " 60 % ", ".6"])
def test_fractions_are_written_as_decimals_or_percent(text):
    if text == ".6":  # a decimal needs its leading digit
        with pytest.raises(ConfigError):
            parse_size(text)
        return
    size = parse_size(text)
    assert size.fraction == pytest.approx(0.6) and size.bytes is None
    assert size.resolve(1000) == 600


def test_whole_fractions_are_accepted():
    assert parse_size("1").fraction == 1.0 and parse_size("100%").fraction == 1.0


@pytest.mark.parametrize("text", ["0", "off", "OFF", " off "])
def test_the_disk_cache_is_off_with_0_or_off(text):
    assert Config.from_mapping({"QUANTPLAY_DISK_CACHE_LIMIT": text}).disk_cache_limit is None


def test_the_disk_cache_limit_takes_sizes_and_fractions_of_free_disk():
    assert Config().disk_cache_limit == Size(bytes=8 * 2**30)
    assert Config.from_mapping({"QUANTPLAY_DISK_CACHE_LIMIT": "20%"}).disk_cache_limit.resolve(10**12) == 2 * 10**11
    assert Config.from_mapping({"QUANTPLAY_DISK_CACHE_LIMIT": "2GB"}).disk_cache_limit.resolve(1) == 2 * 10**9


@pytest.mark.parametrize("text, expected", [
    ("1", True), ("true", True), ("YES", True), ("on", True), ("0", False), ("false", False), ("no", False),
    ("Off", False), ("", False),
])
def test_switches(text, expected):
    assert Config.from_mapping({"QUANTPLAY_TRUST_REMOTE_CODE": text}).trust_remote_code is expected
    assert Config.from_mapping({"QUANTPLAY_SHARE": text}).share is expected


def test_every_variable_lands_in_its_field():
    cfg = Config.from_mapping({
        "QUANTPLAY_CACHE_DIR": "/tmp/qp-cache", "QUANTPLAY_MODEL_DIRS": os.pathsep.join(["/tmp/a", "", "/tmp/b"]),
        "QUANTPLAY_MEMORY_BUDGET": "3GiB", "QUANTPLAY_MAX_PROMPT_CHARS": "10", "QUANTPLAY_MAX_PROMPT_TOKENS": "11",
        "QUANTPLAY_MAX_NEW_TOKENS": "12", "QUANTPLAY_MAX_VARIANTS": "3", "QUANTPLAY_MAX_SESSIONS": "2",
        "QUANTPLAY_QUEUE_SIZE": "4", "QUANTPLAY_PRELOAD": "fp32, int8,", "GRADIO_SERVER_PORT": "8080",
    })
    assert cfg.cache_dir == Path("/tmp/qp-cache")
    assert cfg.model_dirs == (Path("/tmp/a").resolve(), Path("/tmp/b").resolve())
    assert cfg.memory_budget == Size(bytes=3 * 2**30)
    assert cfg.limits == Limits(max_prompt_chars=10, max_prompt_tokens=11, max_new_tokens=12, max_variants=3)
    assert (cfg.max_sessions, cfg.queue_size, cfg.preload, cfg.server_port) == (2, 4, ("fp32", "int8"), 8080)


def test_the_host_follows_the_space_unless_named():
    assert Config().host == "127.0.0.1"
    assert Config.from_mapping({"SPACE_ID": "me/quantplay"}).host == "0.0.0.0"
    assert Config.from_mapping({"SPACE_ID": "me/quantplay", "GRADIO_SERVER_NAME": "10.0.0.2"}).host == "10.0.0.2"


def test_sources_say_default_or_environment():
    cfg = Config.from_env({"QUANTPLAY_MAX_NEW_TOKENS": "64", "UNRELATED": "x"})
    rows = {row["variable"]: row for row in cfg.describe()}
    assert list(rows) == [var.name for var in VARIABLES]
    assert rows["QUANTPLAY_MAX_NEW_TOKENS"] == {"variable": "QUANTPLAY_MAX_NEW_TOKENS", "value": "64",
                                                "source": "environment", "help": "most new tokens per variant"}
    assert {name for name, row in rows.items() if row["source"] == "environment"} == {"QUANTPLAY_MAX_NEW_TOKENS"}
    assert rows["QUANTPLAY_DISK_CACHE_LIMIT"]["value"] == "8.00 GiB"
    off = {r["variable"]: r for r in Config.from_mapping({"QUANTPLAY_DISK_CACHE_LIMIT": "off"}).describe()}
    assert off["QUANTPLAY_DISK_CACHE_LIMIT"]["value"] == "off"


def test_a_config_is_frozen_and_use_makes_it_current():
    cfg = Config.from_mapping({"QUANTPLAY_MAX_VARIANTS": "2"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.max_sessions = 3
    before = qconfig.current()
    try:
        assert qconfig.use(cfg) is cfg and qconfig.current() is cfg
    finally:
        qconfig.use(before)


def _clean_env(**settings: str) -> dict[str, str]:
    """This process's environment without any quantplay setting a developer may have exported, plus `settings`."""
    keep = {k: v for k, v in os.environ.items() if k not in {var.name for var in VARIABLES}}
    return {**keep, **settings}


LIMIT_ROWS = {"(memory limit)", "(memory budget)", "(CPUs)"}  # resources.config_rows, after the settings


def test_cli_config_json_reports_each_setting_and_its_source():
    out = subprocess.run([sys.executable, "-m", "quantplay", "config", "--json"], capture_output=True, text=True,
                         timeout=120, env=_clean_env(QUANTPLAY_MAX_NEW_TOKENS="64"))
    assert out.returncode == 0, out.stderr
    rows = {row["variable"]: row for row in json.loads(out.stdout)}
    assert set(rows) == {var.name for var in VARIABLES} | LIMIT_ROWS
    assert (rows["QUANTPLAY_MAX_NEW_TOKENS"]["value"], rows["QUANTPLAY_MAX_NEW_TOKENS"]["source"]) == ("64", "environment")
    assert (rows["QUANTPLAY_MAX_VARIANTS"]["value"], rows["QUANTPLAY_MAX_VARIANTS"]["source"]) == ("5", "default")


def test_cli_config_prints_a_table():
    out = subprocess.run([sys.executable, "-m", "quantplay", "config"], capture_output=True, text=True, timeout=120,
                         env=_clean_env(QUANTPLAY_MEMORY_BUDGET="4GiB"))
    line = next(line for line in out.stdout.splitlines() if line.startswith("QUANTPLAY_MEMORY_BUDGET"))
    assert "4.00 GiB" in line and "environment" in line
    assert len(out.stdout.splitlines()) == len(VARIABLES) + len(LIMIT_ROWS)


@pytest.mark.parametrize("name, value", [("QUANTPLAY_MAX_NEW_TOKENS", "abc"), ("QUANTPLAY_MEMORY_BUDGET", "1000")])
def test_a_malformed_variable_stops_the_cli_at_start_up(name, value):
    out = subprocess.run([sys.executable, "-m", "quantplay", "presets"], capture_output=True, text=True, timeout=120,
                         env=_clean_env(**{name: value}))
    assert out.returncode == 2
    assert out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {name}={value!r}")


def test_a_malformed_variable_stops_the_server_at_start_up():
    out = subprocess.run([sys.executable, str(ROOT / "app.py")], capture_output=True, text=True, timeout=180,
                         env=child_env(QUANTPLAY_MAX_NEW_TOKENS="abc", QUANTPLAY_MALLOC="system"), cwd=ROOT)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: QUANTPLAY_MAX_NEW_TOKENS='abc'")


ENV_READ = re.compile(r"os\.environ\.get|os\.getenv|os\.environ\[[^\]]+\](?!\s*=[^=])|environ\.get\(")
READERS = {"config.py", "__main__.py", "allocator.py"}  # what reads variables; the rest are passed a Config


def test_variables_are_read_only_in_config_the_cli_and_the_allocator():
    readers = {path.name for path in (ROOT / "quantplay").glob("*.py") if ENV_READ.search(path.read_text())}
    assert readers <= READERS


NO_CIRCLE = """
import sys
from quantplay import diskcache, estimator
from quantplay.config import Config
estimator.load_config("gpt2")
diskcache.limit_bytes(Config())
print(sorted(m for m in sys.modules if m == "quantplay.loader"))
"""


def test_diskcache_and_estimate_never_import_the_loader():
    out = subprocess.run([sys.executable, "-c", NO_CIRCLE], capture_output=True, text=True, timeout=120,
                         env=child_env())
    assert out.stdout.strip() == "[]", out.stderr
