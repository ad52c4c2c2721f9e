"""Warm start for classrooms: QUANTPLAY_PRELOAD loads variants of the default model at startup.

`start(config)` reads the list from the config's `preload` (parsed once, at
start-up); a background thread asks the shared cache for each listed preset, so
the first Compare in front of a class finds them loaded. Its progress is a plain
dict the page polls; it knows nothing about the page.
"""

from __future__ import annotations

import logging
import threading
import time

from . import catalog
from . import config as qconfig
from .config import Config
from .loader import ModelCache, default_cache
from .presets import PresetError, get_preset

log = logging.getLogger(__name__)


class Preloader:
    def __init__(self, names: list[str], model: str = catalog.BUNDLED_NAME, cache: ModelCache | None = None,
                 config: Config | None = None) -> None:
        self.presets = [get_preset(name) for name in names]  # unknown names fail at startup, loudly
        self.model = model
        self.cache = cache
        self.config = config
        self.status: dict[str, str] = {p.name: "waiting" for p in self.presets}
        self.thread = threading.Thread(target=self._run, name="quantplay-preload", daemon=True)

    def start(self) -> Preloader:
        self.thread.start()
        return self

    @property
    def done(self) -> bool:
        return not self.thread.is_alive() and all(s != "waiting" for s in self.status.values())

    def _run(self) -> None:
        cache = self.cache or default_cache()
        try:
            source = catalog.resolve(self.model, progress=lambda f, m: self.status.update({"model": m}),
                                     config=self.config)
        except Exception as exc:
            self.status = {p.name: f"error: {exc}" for p in self.presets}
            return
        self.status.pop("model", None)
        for preset in self.presets:
            self.status[preset.name] = "loading…"
            start = time.perf_counter()
            try:
                _, hit = cache.get(source, preset)
                self.status[preset.name] = "ready" + (" (was loaded)" if hit else f" in {time.perf_counter() - start:.1f} s")
            except Exception as exc:  # the app keeps serving; the page shows what failed
                log.warning("preloading %s failed: %s", preset.name, exc)
                self.status[preset.name] = f"error: {exc}"

    def markdown(self) -> str:
        return "preloading: " + " · ".join(f"**{name}** {state}" for name, state in self.status.items())


_started: Preloader | None = None


def start(config: Config | None = None) -> Preloader | None:
    """Start preloading what the config's `preload` lists (QUANTPLAY_PRELOAD, e.g. "fp32,int8,nf4"); once per process."""
    global _started
    names = (config or qconfig.current()).preload
    if not names or _started is not None:
        return _started
    try:
        _started = Preloader(list(names), config=config).start()
    except PresetError as exc:
        raise SystemExit(f"QUANTPLAY_PRELOAD={','.join(names)!r}: {exc}") from None
    return _started
