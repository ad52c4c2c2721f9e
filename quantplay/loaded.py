"""What the cache hands out: one loaded variant (`LoadedModel`), and the device a
`device_map` resolves to, which is part of its key ("auto" is "cuda:0" on a CUDA
machine, else "cpu", so a preloaded "auto" entry and a request placed on "cuda:0"
are one load). `loader.ModelCache` owns the entries; this module only describes one.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import torch

from . import weights
from .catalog import ModelSource
from .presets import PresetError, QuantPreset

DEVICE_MAPS = ("auto", "cpu", "cuda:0")


def resolve_device(device_map: str) -> str:
    if device_map not in DEVICE_MAPS:
        raise PresetError(f"device_map={device_map!r}: use one of {', '.join(DEVICE_MAPS)}.")
    if device_map == "cuda:0" and not torch.cuda.is_available():
        raise PresetError("device_map='cuda:0' but no CUDA GPU is visible; use 'auto' or 'cpu'.")
    return "cuda:0" if device_map == "auto" and torch.cuda.is_available() else ("cpu" if device_map == "auto" else device_map)


@dataclass
class LoadedModel:
    source: ModelSource
    preset: QuantPreset
    device_map: str
    device: str
    model: Any
    tokenizer: Any
    footprint_bytes: int
    footprint_hf_bytes: int
    load_seconds: float
    warnings: list[str] = field(default_factory=list)
    loaded_from: str = "checkpoint"  # or "disk cache": prequantized weights, no quantizing
    users: int = 0
    layer_errors: weights.WeightReport | None = None  # per-layer weight error, worked out before any forward pass
    generate_lock: threading.Lock = field(default_factory=threading.Lock)  # taken by the 'threads' schedule

    @property
    def key(self) -> tuple:
        return (self.source.key, self.preset, self.device)

    def describe(self) -> dict[str, Any]:
        return {"model": self.source.name, "preset": self.preset.name, "device": self.device,
                "footprint_bytes": self.footprint_bytes, "in_use": self.users > 0, "loaded_from": self.loaded_from}
