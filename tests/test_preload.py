import pytest

from quantplay import preload
from quantplay.config import Config


def test_preloader_loads_the_listed_variants_in_the_background(tiny_source, cache):
    loader = preload.Preloader(["fp32", "int8"], model=str(tiny_source.path), cache=cache).start()
    loader.thread.join(120)
    assert loader.done
    assert loader.status["fp32"].startswith("ready") and loader.status["int8"].startswith("ready")
    assert {e["preset"] for e in cache.entries()} == {"fp32", "int8"}
    assert "**int8** ready" in loader.markdown()


def test_a_failing_preload_is_reported_not_raised(cache):
    loader = preload.Preloader(["nf4"], model="not/reachable-offline", cache=cache).start()
    loader.thread.join(60)
    assert loader.status["nf4"].startswith("error:")


def test_unknown_preset_names_stop_the_server_at_startup(monkeypatch):
    monkeypatch.setattr(preload, "_started", None)
    with pytest.raises(SystemExit, match="QUANTPLAY_PRELOAD='fp32,int9'.*int9"):
        preload.start(Config.from_mapping({"QUANTPLAY_PRELOAD": "fp32,int9"}))
    assert preload._started is None


def test_nothing_to_preload_starts_nothing(monkeypatch):
    monkeypatch.setattr(preload, "_started", None)
    assert preload.start(Config()) is None
    assert preload.start(Config.from_mapping({"QUANTPLAY_PRELOAD": " , "})) is None
