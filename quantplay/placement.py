"""Where each variant of a request runs, decided before anything loads: GPU or CPU RAM.

A GPU user comparing an 8B model cannot hold its fp32 reference (32 GB) in a
24 GiB card, yet the point of the page is to compare against it. So there are
two budgets, RAM and VRAM, and `plan` places every variant: the quantized ones
on the GPU (bitsandbytes is built for it), then each floating-point reference
on the GPU when it still fits there, otherwise in CPU RAM (device_map "cpu").
When a variant fits neither, the request is refused with both budgets and the
estimates named, before a byte is loaded.

`plan` is pure: the estimates and the budgets are its inputs and it calls no
torch.cuda function, so it is unit-tested on CPU with injected device sizes.
The budgets are the loader cache's, one per memory `pool`: RAM (the config's
memory budget, within a container's limit) and VRAM (`QUANTPLAY_VRAM_BUDGET`,
0.9 of the free VRAM by default: the CUDA context is already outside "free",
and a request's activations and KV caches, at most 512 + 512 tokens per
variant, need far less than the tenth left: 128 MiB of fp16 KV cache for an
8B Llama). `comparison.place` consults the plan for every request on a CUDA
machine with device_map "auto"; the loader puts each variant on the device it
was given ("cuda:0" or "cpu"; no variant is split across both).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

from .errors import MemoryBudgetError

GPU = "cuda:0"
CPU = "cpu"


def pool(device: str) -> str:
    """The memory a variant on `device` counts against: "cuda" (VRAM) or "cpu" (RAM)."""
    return "cuda" if device.startswith("cuda") else "cpu"


@dataclass(frozen=True)
class Need:
    """One variant of a request: its preset name, whether bitsandbytes quantizes it, its weight bytes."""

    name: str
    quantized: bool
    estimate_bytes: int


@dataclass(frozen=True)
class Placement:
    name: str
    device: str  # "cuda:0" or "cpu"; also the device_map the loader takes
    estimate_bytes: int
    reason: str  # for the variant's column, e.g. "fp32 · in RAM: does not fit in 24 GiB VRAM"

    @property
    def on_gpu(self) -> bool:
        return self.device.startswith("cuda")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Plan:
    placements: tuple[Placement, ...]
    ram_budget_bytes: int
    vram_budget_bytes: int | None  # None: no CUDA GPU

    def placement(self, name: str) -> Placement:
        for p in self.placements:
            if p.name == name:
                return p
        raise KeyError(name)

    @property
    def vram_bytes(self) -> int:
        return sum(p.estimate_bytes for p in self.placements if p.on_gpu)

    @property
    def ram_bytes(self) -> int:
        return sum(p.estimate_bytes for p in self.placements if not p.on_gpu)

    def to_dict(self) -> dict:
        return {"placements": [p.to_dict() for p in self.placements], "ram_budget_bytes": self.ram_budget_bytes,
                "vram_budget_bytes": self.vram_budget_bytes}


def gib(n: int) -> str:
    """'24 GiB' for whole sizes, '29.9 GiB' otherwise, MiB below one GiB."""
    if abs(n) < 2**30:
        return f"{n / 2**20:.0f} MiB"
    value = n / 2**30
    return f"{value:.0f} GiB" if abs(value - round(value)) < 0.05 else f"{value:.1f} GiB"


def _needs(variants: Iterable[Need | tuple[str, bool, int]]) -> list[Need]:
    return [v if isinstance(v, Need) else Need(*v) for v in variants]


def _estimates(needs: list[Need]) -> str:
    return ", ".join(f"{n.name} {gib(n.estimate_bytes)}" for n in needs)


def _cpu_only(needs: list[Need], ram_budget_bytes: int) -> Plan:
    total = sum(n.estimate_bytes for n in needs)
    if total > ram_budget_bytes:
        raise MemoryBudgetError(f"These variants need {gib(total)} ({_estimates(needs)}) and the RAM budget is "
                                f"{gib(ram_budget_bytes)}; no CUDA GPU is visible. Choose fewer or smaller variants.")
    return Plan(tuple(Placement(n.name, CPU, n.estimate_bytes, f"{n.name} · on CPU: no CUDA GPU") for n in needs),
                ram_budget_bytes, None)


def plan(variants: Iterable[Need | tuple[str, bool, int]], ram_budget_bytes: int,
         vram_budget_bytes: int | None) -> Plan:
    """Place every variant (name, quantized, estimate_bytes), in request order; refuse what fits nowhere.

    Quantized variants go on the GPU first; each floating-point variant then takes
    the GPU if it still fits beside them, else CPU RAM. With no GPU (vram None)
    everything runs on CPU, as before.
    """
    needs = _needs(variants)
    if vram_budget_bytes is None:
        return _cpu_only(needs, ram_budget_bytes)
    vram, ram = gib(vram_budget_bytes), gib(ram_budget_bytes)
    quantized = [n for n in needs if n.quantized]
    vram_used = sum(n.estimate_bytes for n in quantized)
    if vram_used > vram_budget_bytes:
        raise MemoryBudgetError(f"The quantized variants need {gib(vram_used)} of VRAM ({_estimates(quantized)}) and "
                                f"the VRAM budget is {vram} (RAM budget {ram}). Choose fewer quantized variants.")
    placed = {n.name: Placement(n.name, GPU, n.estimate_bytes, f"{n.name} · on GPU") for n in quantized}
    ram_used = 0
    for n in (n for n in needs if not n.quantized):
        if vram_used + n.estimate_bytes <= vram_budget_bytes:
            vram_used += n.estimate_bytes
            placed[n.name] = Placement(n.name, GPU, n.estimate_bytes, f"{n.name} · on GPU")
        elif ram_used + n.estimate_bytes <= ram_budget_bytes:
            ram_used += n.estimate_bytes
            beside = f" beside {gib(vram_used)} of quantized variants" if vram_used else ""
            placed[n.name] = Placement(n.name, CPU, n.estimate_bytes,
                                       f"{n.name} · in RAM: does not fit in {vram} VRAM{beside}")
        else:
            raise MemoryBudgetError(
                f"{n.name} needs {gib(n.estimate_bytes)} and fits neither the VRAM budget of {vram} "
                f"({gib(vram_used)} already placed there) nor the RAM budget of {ram} ({gib(ram_used)} already "
                f"placed there). Estimates: {_estimates(needs)}. Compare the quantized variants without it, "
                "or a smaller model.")
    return Plan(tuple(placed[n.name] for n in needs), ram_budget_bytes, vram_budget_bytes)


def column(name: str, device: str, cuda_available: bool) -> tuple[str | None, str | None]:
    """(device, words for the column) of a loaded variant on a CUDA machine; (None, None) on a CPU-only one."""
    if not cuda_available:
        return None, None
    return device, f"{name} · on GPU" if device.startswith("cuda") else f"{name} · in RAM"
