"""How a comparison reads on the page: pure functions from result dicts to text.

No gradio here, so every line a person sees can be tested as a string. All
text that came from a user (model names, warnings that quote input) is
escaped before it reaches Markdown.
"""

from __future__ import annotations

import html
from typing import Any

MiB = 2**20


def esc(text: Any) -> str:
    return html.escape(str(text), quote=False)


def mib(value: int | None) -> str:
    return "–" if value is None else f"{value / MiB:.1f} MiB"


def speed_ratio(variant: dict, reference: dict) -> float | None:
    """How many times slower than fp32 this variant decodes (>1 = slower)."""
    mine, ref = variant.get("tokens_per_second"), reference.get("tokens_per_second")
    if not mine or not ref:
        return None
    return ref / mine


def stats_markdown(variant: dict, reference: dict, device: str = "cpu") -> str:
    """The figures under one column."""
    lines = []
    size = variant.get("footprint_bytes")
    if size:
        line = f"**{mib(size)}** weights"
        if variant is not reference and reference.get("footprint_bytes"):
            line += f" · **{reference['footprint_bytes'] / size:.2f}× smaller** than fp32"
        lines.append(line)
    load = "cached" if variant.get("cache_hit") else (
        f"{variant['load_seconds']:.2f} s" if variant.get("load_seconds") is not None else "–")
    kv = mib(variant.get("kv_cache_bytes")) if variant.get("kv_cache_bytes") is not None else "–"
    lines.append(f"KV cache {kv} · load {load}")
    ttft, tps = variant.get("ttft_seconds"), variant.get("tokens_per_second")
    if ttft is not None:
        lines.append(f"first token {ttft:.3f} s · " + (f"{tps:.1f} tokens/s" if tps else "– tokens/s"))
    ratio = speed_ratio(variant, reference) if variant is not reference else None
    if ratio and ratio > 1.1 and variant.get("status") in ("done", "stopped"):
        hardware = "this GPU" if device.startswith("cuda") else "this CPU"
        lines.append(f"**Note: {ratio:.1f}× slower than fp32 on {hardware}.** Smaller is not always faster: "
                     "bitsandbytes dequantizes weights on every matmul.")
    if variant.get("error"):
        lines.append(f"**Error:** {esc(variant['error'])}")
    for note in variant.get("warnings", []):
        lines.append(f"_note: {esc(note)}_")
    return "  \n".join(lines)


def header_markdown(variant: dict, is_reference: bool) -> str:
    role = " · reference" if is_reference else ""
    summary = variant.get("settings", {}).get("description") or ""
    return f"### {esc(variant['name'])}{role} <small>({variant['status']})</small>\n<small>{esc(summary)}</small>"


def status_line(frame: dict) -> str:
    parts = []
    for v in frame["variants"]:
        message = v.get("message") or v["status"]
        parts.append(f"**{esc(v['name'])}**: {esc(message)}")
    head = "Done." if frame["done"] else "Working…"
    lines = [f"{head} " + " · ".join(parts)]
    for warning in frame.get("warnings", []):
        lines.append(f"**warning:** {esc(warning)}")
    return "  \n".join(lines)


def footprint_rows(frame: dict) -> list[dict[str, Any]]:
    """Bar chart data: one bar per loaded variant, fp32 marked as the reference."""
    rows = []
    for i, v in enumerate(frame["variants"]):
        if v.get("footprint_bytes"):
            rows.append({"variant": v["name"], "MiB": round(v["footprint_bytes"] / MiB, 1),
                         "kind": "fp32 reference" if i == 0 else "variant"})
    return rows


def memory_markdown(snapshot: dict, budget_bytes: int, resident_bytes: int) -> str:
    if snapshot.get("cuda_allocated_bytes") is not None:
        live = f"VRAM allocated **{mib(snapshot['cuda_allocated_bytes'])}** (peak {mib(snapshot['cuda_peak_allocated_bytes'])})"
    else:
        live = f"process RAM **{mib(snapshot['process_rss_bytes'])}** (peak {mib(snapshot['process_rss_peak_bytes'])})"
    return (f"{live} · available {mib(snapshot['device_available_bytes'])} of {mib(snapshot['device_total_bytes'])}"
            f"  \nloader cache: {mib(resident_bytes)} of a {mib(budget_bytes)} budget")


def cache_rows(entries: list[dict]) -> list[list[Any]]:
    return [[e["model"], e["preset"], round(e["footprint_bytes"] / MiB, 1), "yes" if e["in_use"] else ""]
            for e in entries]


# -- agreement with fp32 ----------------------------------------------------------
# ColorBrewer YlOrBr: sequential and colour-blind safe; dark text stays readable on every step.
KL_STEPS = [(0.01, "transparent", "< 0.01"), (0.1, "#fff7bc", "0.01–0.1"), (0.5, "#fec44f", "0.1–0.5"),
            (float("inf"), "#ec7014", "≥ 0.5")]
METRIC_HEADERS = ["variant", "KL mean (nats)", "KL max", "top-1 agreement", "p(fp32 token)", "perplexity",
                  "first divergence"]


def _fmt(value: Any, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def agreement_rows(frame: dict) -> list[list[str]]:
    rows = []
    for v in frame["variants"]:
        first = v.get("first_divergence_token")
        rows.append([v["name"], _fmt(v.get("kl_divergence_mean"), ".4f"), _fmt(v.get("kl_divergence_max"), ".3f"),
                     _fmt(v.get("top1_agreement"), ".0%"), _fmt(v.get("reference_token_prob_mean"), ".0%"),
                     _fmt(v.get("perplexity"), ".2f"),
                     ("never" if v.get("top1_agreement") is not None else "–") if first is None else f"token {first}"])
    return rows


def readings_markdown(frame: dict) -> str:
    lines = [f"- {esc(v['reading'])}" for v in frame["variants"][1:] if v.get("reading")]
    return "\n".join(lines) or "_Agreement metrics appear when a comparison finishes._"


def legend_html() -> str:
    swatches = "".join(f'<span class="qp-tok" style="background:{color}">KL {label}</span> '
                       for _, color, label in KL_STEPS)
    return (f'<div class="qp-legend">{swatches}<span class="qp-tok qp-miss">different top-1 token</span> '
            "· hover a token for fp32's and the variant's top choices</div>")


def _alternatives(pairs: list) -> str:
    return ", ".join(f"{text!r} {p:.0%}" for text, p in pairs)


def token_html(variant: dict) -> str:
    """fp32's continuation token by token, shaded by KL(fp32 ‖ variant); top-1 disagreements outlined."""
    if not variant.get("token_scores"):
        return ""
    spans = []
    for i, t in enumerate(variant["token_scores"]):
        color = next(c for limit, c, _ in KL_STEPS if t["kl"] < limit)
        title = (f"token {i}: {t['text']!r} · KL {t['kl']:.3f} · {variant['name']} gives it {t['reference_prob']:.0%}\n"
                 f"fp32 top: {_alternatives(t['fp32_top'])}\n{variant['name']} top: {_alternatives(t['variant_top'])}")
        cls = "qp-tok" + ("" if t["agree"] else " qp-miss")
        text = esc(t["text"]).replace("\n", "↵<br>")
        spans.append(f'<span class="{cls}" style="background:{color}" title="{html.escape(title, quote=True)}">{text}</span>')
    return (f'<div class="qp-tokens"><b>{esc(variant["name"])}</b> vs fp32: '
            f'{_fmt(variant.get("top1_agreement"), ".0%")} same top-1<br>{"".join(spans)}</div>')
