"""Where inside the model a quantized variant loses: per-layer weight error, and what LLM.int8 keeps in 16-bit.

KL and top-1 agreement say *that* a variant departs from fp32; this module says *where*. For every linear
layer a variant quantized it compares the weights the variant holds (Ŵ) with the checkpoint's float
weights (W, read by name from the source's safetensors files, so no second model is loaded):
‖W − Ŵ‖/‖W‖, max |W − Ŵ| and, for 4-bit, the share of weights on each of the 16 codes.

It runs at load time, before the first forward pass, and must: on AVX512-BF16 CPUs bitsandbytes 0.50.2
repacks 4-bit weights on first use, after which `dequantize_4bit` silently returns wrong values (a
layer found repacked is skipped, never misreported). Its cost on the bundled model is in
docs/benchmarks.md.

`OutlierHooks` counts, during one generation, the distinct input columns each Linear8bitLt sees with
|x| ≥ llm_int8_threshold in the fp16 its kernel quantizes (`x.half()`): the columns LLM.int8 keeps in
16-bit. The hooks sit on the shared model, so a generation running on the same int8 model at the same
moment for another request is counted too; one that joins a shared generation late misses its prefill.

It knows nothing about prompts, caches or the page.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from . import diskcache, pretrained

log = logging.getLogger(__name__)
_LAYER = re.compile(r"^(.*?)\.(\d+)\.(.+)$")  # "model.layers.29.mlp.down_proj" -> 29, "mlp.down_proj"


@dataclass
class LayerError:
    name: str  # the module's full name, e.g. "model.layers.29.mlp.down_proj"
    layer: int | None  # the block index; None for a layer outside the blocks (lm_head)
    module: str  # "mlp.down_proj", "self_attn.q_proj", …
    bits: int  # 8 (LLM.int8) or 4 (nf4/fp4)
    relative_error: float  # ‖W − Ŵ‖ / ‖W‖
    max_abs_error: float
    code_shares: list[float] | None = None  # 4-bit: the share of weights on each of the 16 codes

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        where = f"layer {self.layer} {self.module}" if self.layer is not None else self.module
        return f"{where}: {self.relative_error:.1%} relative error"


def split_name(name: str) -> tuple[int | None, str]:
    """(block index, module within the block) of a module's full name."""
    match = _LAYER.match(name)
    return (int(match.group(2)), match.group(3)) if match else (None, name)


def quantized_linears(model: Any) -> Iterator[tuple[str, Any]]:
    """(name, module) of every bitsandbytes linear layer in the model, in order."""
    import bitsandbytes as bnb

    for name, module in model.named_modules():
        if isinstance(module, (bnb.nn.Linear8bitLt, bnb.nn.Linear4bit)):
            yield name, module


def dequantized(module: Any) -> torch.Tensor:
    """Ŵ in float32 from the tensors the layer holds: int8 CB · SCB / 127 (the scales sit on the weight
    until the first forward pass, in `module.state` after it); 4-bit through its quant state."""
    import bitsandbytes as bnb

    weight = module.weight
    if isinstance(module, bnb.nn.Linear8bitLt):
        scales = weight.SCB if getattr(weight, "SCB", None) is not None else module.state.SCB
        return torch.mul(weight.data, scales.float().unsqueeze(1) / 127.0)  # int8 × float32: one pass, float32
    if getattr(weight.quant_state, "packing_format_for_cpu", False):
        raise ValueError("its 4-bit weights were repacked for the CPU kernel (a forward pass ran)")
    return bnb.functional.dequantize_4bit(weight.data, weight.quant_state).float()


def code_shares(module: Any) -> list[float]:
    """Share of a 4-bit layer's weights on each of the 16 codes (two codes a byte)."""
    packed = module.weight.data.view(torch.uint8).reshape(-1)
    pairs = torch.bincount(packed.int(), minlength=256).reshape(16, 16).double()  # [high code, low code]
    counts = pairs.sum(dim=1) + pairs.sum(dim=0)
    return (counts / counts.sum()).tolist()


class Checkpoint:
    """The source's float weights, read one tensor at a time by parameter name (safetensors only)."""

    def __init__(self, files: list[Path]):
        from safetensors import safe_open

        self._handles = [safe_open(str(f), framework="pt") for f in files if f.suffix == ".safetensors"]
        self._where = {key: h for h in self._handles for key in h.keys()}

    def __bool__(self) -> bool:
        return bool(self._where)

    def get(self, name: str) -> torch.Tensor | None:
        """The tensor `name`, trying it with and without a leading "model." (checkpoints differ)."""
        for key in (name, name.removeprefix("model."), "model." + name):
            if key in self._where:
                return self._where[key].get_tensor(key)
        return None


def layer_error(name: str, module: Any, original: torch.Tensor) -> LayerError:
    """One layer's error from its checkpoint weight `original` and the tensors it holds."""
    import bitsandbytes as bnb

    w = original.float()
    diff = dequantized(module).reshape(w.shape).sub_(w)  # in place: one layer-sized temporary at a time
    layer, part = split_name(name)
    four = isinstance(module, bnb.nn.Linear4bit)
    norm = torch.linalg.vector_norm
    return LayerError(name, layer, part, 4 if four else 8, float(norm(diff) / norm(w).clamp_min(1e-30)),
                      float(norm(diff, ord=float("inf"))), code_shares(module) if four else None)


def layer_errors(model: Any, files: list[Path]) -> tuple[list[LayerError], list[str]]:
    """Every quantized layer's error against the checkpoint `files`, and notes on what was skipped."""
    checkpoint = Checkpoint(files)
    if not checkpoint:
        return [], ["no per-layer weight error: the checkpoint has no safetensors files to compare with"]
    rows, skipped = [], []
    with torch.no_grad():
        for name, module in quantized_linears(model):
            original = checkpoint.get(name + ".weight")
            try:
                if original is None:
                    raise ValueError("not found in the checkpoint")
                rows.append(layer_error(name, module, original))
            except ValueError as exc:
                skipped.append(f"{name}: {exc}")
    notes = [f"per-layer weight error skipped {len(skipped)} layer(s), e.g. {skipped[0]}"] if skipped else []
    return rows, notes


@dataclass
class WeightReport:
    """What `at_load` found for one loaded variant (kept on its LoadedModel)."""
    layers: list[LayerError]
    notes: list[str]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"layers": [r.to_dict() for r in self.layers], "notes": list(self.notes), "seconds": self.seconds,
                "worst": [r.describe() for r in worst(self.layers)]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WeightReport:
        return cls([LayerError(**row) for row in data["layers"]], list(data["notes"]), float(data["seconds"]))


def at_load(model: Any, files: list[Path]) -> WeightReport | None:
    """The per-layer error of a freshly loaded model (None when it holds no quantized layer). Never
    raises: a failure becomes a note, since a load must not fail for want of a diagnostic."""
    if not isinstance(model, torch.nn.Module) or next(quantized_linears(model), None) is None:
        return None
    start = time.perf_counter()
    try:
        rows, notes = layer_errors(model, files)
    except Exception as exc:  # an unreadable checkpoint file, an unknown layout: say so, load anyway
        log.warning("per-layer weight error failed: %s", exc)
        rows, notes = [], [f"per-layer weight error failed: {exc}"]
    return WeightReport(rows, notes, time.perf_counter() - start)


NOTE = "quantplay-weights.json"  # a variant's per-layer weight error, kept beside its disk-cache entry


def for_load(source, preset, device: str, model: Any, loaded_from: str, config=None) -> WeightReport | None:
    """Per-layer weight error of a variant just loaded, before its first forward pass repacks 4-bit weights.
    Kept beside the variant's disk-cache entry, so a prequantized load reads it instead of working it out.
    Runs on the compute thread (the loader calls it there)."""
    if not preset.quantized:
        return None
    key = diskcache.entry_key(source, preset, device) if diskcache.enabled(config) else None
    saved = diskcache.read_note(key, NOTE, config) if key and loaded_from == "disk cache" else None
    if saved:
        return WeightReport.from_dict(saved)
    report = at_load(model, pretrained.weight_files(source))
    if key and report is not None and report.layers:
        diskcache.write_note(key, NOTE, report.to_dict(), config)
    return report


def worst(rows: list[LayerError], n: int = 5) -> list[LayerError]:
    return sorted(rows, key=lambda r: r.relative_error, reverse=True)[:n]


def mean_relative_error(rows: list[LayerError]) -> float | None:
    return sum(r.relative_error for r in rows) / len(rows) if rows else None


# -- LLM.int8 outliers during a generation -------------------------------------------
class OutlierHooks:
    """Forward pre-hooks on every Linear8bitLt of the given models while the block runs: per layer, the
    distinct input feature columns with |x.half()| ≥ the layer's llm_int8_threshold (the test in
    bitsandbytes' int8_vectorwise_quant), over every forward pass (prefill and decode alike)."""

    def __init__(self, models: dict[str, Any]):
        import bitsandbytes as bnb

        self._layers = {variant: [(name, m) for name, m in model.named_modules() if isinstance(m, bnb.nn.Linear8bitLt)]
                        for variant, model in models.items() if isinstance(model, torch.nn.Module)}
        self._layers = {variant: layers for variant, layers in self._layers.items() if layers}
        self._peaks: dict[tuple[str, str], torch.Tensor] = {}
        self._handles: list[Any] = []

    def __enter__(self) -> OutlierHooks:
        for variant, layers in self._layers.items():
            for name, module in layers:
                self._handles.append(module.register_forward_pre_hook(self._hook(variant, name, module)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, variant: str, name: str, module: Any):
        # Per column, the largest |x| seen; rounding to fp16 is monotonic, so some |x.half()| ≥ threshold
        # exactly when the largest, rounded, is: one running max, a few cheap operations a forward pass.
        peak = self._peaks[(variant, name)] = torch.zeros(module.in_features, device=module.weight.device)

        def record(_module, args) -> None:
            if args and isinstance(args[0], torch.Tensor):
                x = args[0].detach()
                torch.maximum(peak, x.reshape(-1, x.shape[-1]).abs().amax(dim=0).to(peak), out=peak)

        return record

    def counts(self) -> dict[str, list[dict[str, Any]]]:
        """Per variant: one row per Linear8bitLt (layer, module, threshold, outlier_columns, in_features)."""
        out: dict[str, list[dict[str, Any]]] = {}
        for variant, layers in self._layers.items():
            out[variant] = []
            for name, module in layers:
                layer, part = split_name(name)
                out[variant].append({"name": name, "layer": layer, "module": part,
                                     "threshold": float(module.state.threshold), "in_features": module.in_features,
                                     "outlier_columns": self._columns(self._peaks[(variant, name)], module)})
        return out

    @staticmethod
    def _columns(peak: torch.Tensor, module: Any) -> int:
        threshold = module.state.threshold  # 0: LLM.int8 keeps no column in 16-bit
        return int((peak.half() >= threshold).sum()) if threshold > 0 else 0


def final_report(loaded: list[tuple[str, WeightReport | None]], outliers: OutlierHooks | None) -> dict[str, Any]:
    """The comparison's `weights` field: per quantized variant its layer errors and, for int8, its outliers."""
    counted = outliers.counts() if outliers is not None else {}
    report: dict[str, Any] = {}
    for variant, found in loaded:
        entry = found.to_dict() if found is not None else {}
        if variant in counted:
            entry["outliers"] = counted[variant]
        if entry:
            report[variant] = entry
    return report


# -- display (pure: a report in, text out) ---------------------------------------------
def to_csv(report: WeightReport) -> str:
    """One row per layer; for 4-bit, the share of each code in columns code_0 … code_15."""
    import csv
    import io

    codes = any(r.code_shares for r in report.layers)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["layer", "module", "bits", "relative_error", "max_abs_error"]
                    + ([f"code_{i}" for i in range(16)] if codes else []))
    for r in report.layers:
        writer.writerow(["" if r.layer is None else r.layer, r.module, r.bits, f"{r.relative_error:.6g}",
                         f"{r.max_abs_error:.6g}"] + ([f"{s:.6g}" for s in r.code_shares or []] if codes else []))
    return out.getvalue()


def to_text(model: str, variant: str, report: WeightReport) -> str:
    """The worst five layers in words, then the table."""
    mean = mean_relative_error(report.layers)
    lines = [f"{variant} of {model}: {len(report.layers)} quantized layers"
             + (f", mean relative weight error {mean:.2%}" if mean is not None else "")
             + f" (worked out in {report.seconds:.2f} s as it loaded)"]
    lines += ["worst: " + r.describe() for r in worst(report.layers)]
    lines += [f"note: {n}" for n in report.notes]
    lines += ["", f"{'layer':>5}  {'module':24} {'rel. error':>10}  {'max abs':>9}"]
    for r in report.layers:
        lines.append(f"{'-' if r.layer is None else r.layer:>5}  {r.module:24} {r.relative_error:>10.3%}  "
                     f"{r.max_abs_error:>9.4g}")
    return "\n".join(lines)
