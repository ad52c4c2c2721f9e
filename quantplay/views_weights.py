"""Inside the weights on the page: per-layer error heatmaps, the worst layers in words, and
the input columns LLM.int8 kept in 16-bit. Pure, like `views`: a final frame's `weights`
field in, HTML out.
"""

from __future__ import annotations

from typing import Any

from .views import SHADED_TEXT, esc

HEAT = ["#fff7ec", "#fee8c8", "#fdd49e", "#fdbb84", "#fc8d59", "#ef6548"]  # light to dark; #111 text on each ≥ 5.8:1
MODULE_ORDER = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
                "mlp.up_proj", "mlp.down_proj"]
BUNDLED_GRID_NOTE = ("The bundled model's \"fp32\" weights are the dequantization of a Q4_1 GGUF: they already lie on "
                     "a 4-bit grid (32 weights to a block), so quantizing them again loses less here than it would "
                     "from a true fp32 or bf16 checkpoint.")
INT8_NOTE = ("int8's error is mostly in the activations, not the weights: its weights alone give about a sixth of "
             "the KL of the real int8 model here. LLM.int8 keeps the input columns whose values reach the "
             "threshold in 16-bit; the counts below are this prompt's (prefill and every generated token).")


def _short(module: str) -> str:
    return module.split(".")[-1].removesuffix("_proj")


def heat_grid(rows: list[dict[str, Any]], value: str, fmt, label: str) -> str:
    """A layers × modules table, each cell shaded by its value's share of the largest (dark text on every shade);
    rows are dicts with `layer`, `module` and `value`."""
    modules = sorted({r["module"] for r in rows}, key=lambda m: (MODULE_ORDER.index(m) if m in MODULE_ORDER else 99, m))
    layers = sorted({r["layer"] for r in rows}, key=lambda x: (x is None, x if x is not None else 0))
    cell = {(r["layer"], r["module"]): r[value] for r in rows}
    top = max((float(v) for v in cell.values()), default=0.0) or 1.0
    head = "".join(f"<th>{esc(_short(m))}</th>" for m in modules)
    body = []
    for layer in layers:
        cells = []
        for m in modules:
            v = cell.get((layer, m))
            if v is None:
                cells.append("<td></td>")
                continue
            shade = HEAT[min(len(HEAT) - 1, int(float(v) / top * (len(HEAT) - 1) + 0.5))]
            name = f"layer {layer} {m}" if layer is not None else m
            cells.append(f'<td style="background:{shade};color:{SHADED_TEXT}" title="{esc(name)}: {esc(fmt(v))}">'
                         f"{esc(fmt(v))}</td>")
        body.append(f"<tr><th>{'–' if layer is None else layer}</th>{''.join(cells)}</tr>")
    return (f'<table class="qp-heat" aria-label="{esc(label)}"><caption>{esc(label)}</caption>'
            f"<thead><tr><th>layer</th>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>")


def weights_html(frame: dict, bundled: bool = False) -> str:
    """The final frame's `weights`: per quantized variant, its worst five layers in words and a heatmap of every
    layer's relative weight error; for int8, the input columns LLM.int8 kept in 16-bit on this prompt."""
    report = frame.get("weights") or {}
    parts = []
    if bundled:
        parts.append(f'<p class="qp-note">{esc(BUNDLED_GRID_NOTE)}</p>')
    if not report:
        parts.append("<p><em>No quantized variant in this comparison: nothing was quantized.</em></p>")
    for name, entry in report.items():
        layers = entry.get("layers") or []
        if layers:
            mean = sum(r["relative_error"] for r in layers) / len(layers)
            parts.append(f"<h4>{esc(name)}: mean relative weight error {mean:.2%} over {len(layers)} layers "
                         f"(‖W − Ŵ‖ / ‖W‖, worked out as it loaded)</h4>")
            parts.append("<p>Worst: " + "; ".join(esc(w) for w in entry.get("worst", [])) + ".</p>")
            parts.append(heat_grid([dict(r, value=r["relative_error"]) for r in layers], "value",
                                   lambda v: f"{v:.1%}", f"{name}: relative weight error per layer"))
        for note in entry.get("notes", []):
            parts.append(f'<p class="qp-note">{esc(note)}</p>')
        outliers = entry.get("outliers") or []
        if outliers:
            kept = sum(r["outlier_columns"] for r in outliers)
            most = max(outliers, key=lambda r: r["outlier_columns"])
            threshold = outliers[0]["threshold"]
            where = (f"; most in layer {most['layer']} {esc(most['module'])} ({most['outlier_columns']} of "
                     f"{most['in_features']})" if most["outlier_columns"] else "")
            parts.append(f"<p>{esc(name)}: LLM.int8 kept {kept} input columns in 16-bit across "
                         f"{len(outliers)} layers at threshold {threshold:g}{where}.</p>")
            parts.append(f'<p class="qp-note">{esc(INT8_NOTE)}</p>')
            parts.append(heat_grid([dict(r, value=r["outlier_columns"]) for r in outliers], "value",
                                   lambda v: str(int(v)), f"{name}: input columns kept in 16-bit per layer"))
    return f'<div class="qp-weights">{"".join(parts)}</div>'
