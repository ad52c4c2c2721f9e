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


def summary_line(variant: dict, reference: dict) -> str:
    """The compact row right under an answer: footprint, × smaller, tokens/s, and (when scored) KL and top-1."""
    parts = []
    size = variant.get("footprint_bytes")
    if size:
        parts.append(f"**{mib(size)}**")
        if variant is not reference and reference.get("footprint_bytes"):
            parts.append(f"**{reference['footprint_bytes'] / size:.2f}× smaller**")
    if variant.get("tokens_per_second"):
        parts.append(f"{variant['tokens_per_second']:.1f} tokens/s")
    if variant is not reference and variant.get("kl_divergence_mean") is not None:
        parts.append(f"KL {variant['kl_divergence_mean']:.3f}")
    if variant is not reference and variant.get("top1_agreement") is not None:
        parts.append(f"top-1 {variant['top1_agreement']:.0%}")
    return " · ".join(parts)


def stats_markdown(variant: dict, reference: dict, device: str = "cpu") -> str:
    """The figures under one column: the summary row first, then the details."""
    lines = []
    load = "cached" if variant.get("cache_hit") else (
        f"{variant['load_seconds']:.2f} s" if variant.get("load_seconds") is not None else "–")
    kv = mib(variant.get("kv_cache_bytes")) if variant.get("kv_cache_bytes") is not None else "–"
    lines.append(f"KV cache {kv} · load {load}")
    ttft = variant.get("ttft_seconds")
    if ttft is not None:
        lines[-1] += f" · first token {ttft:.3f} s"
    if variant.get("placement"):  # a CUDA machine: where it runs, its VRAM peak, the device's memory
        lines.append(esc(variant["placement"]) + where_figures(variant))
    ratio = speed_ratio(variant, reference) if variant is not reference else None
    if ratio and ratio > 1.1 and variant.get("status") in ("done", "stopped"):
        hardware = "this GPU" if device.startswith("cuda") else "this CPU"
        lines.append(f"**Note: {ratio:.1f}× slower than fp32 on {hardware}.** Smaller is not always faster: "
                     "bitsandbytes dequantizes weights on every matmul.")
    if variant.get("error"):
        lines.append(f"**Error:** {esc(variant['error'])}")
    for note in variant.get("warnings", []):
        lines.append(f"_note: {esc(note)}_")
    summary = summary_line(variant, reference)  # its own paragraph: CSS sets it larger (`.qp-stats p:first-child`)
    return "\n\n".join(part for part in (summary, "  \n".join(lines)) if part)


def where_figures(variant: dict) -> str:
    """' · VRAM peak 1.06 GiB · VRAM 60.00 GiB free of 80.00 GiB' for a variant on a CUDA machine ('' on CPU)."""
    text = ""
    if variant.get("cuda_peak_allocated_bytes") is not None:
        text += f" · VRAM peak {gib(variant['cuda_peak_allocated_bytes'])}"
    if variant.get("device_total_bytes") is not None:
        memory = "VRAM" if (variant.get("device") or "").startswith("cuda") else "RAM"
        text += (f" · {memory} {gib(variant['device_free_bytes'])} free of "
                 f"{gib(variant['device_total_bytes'])}")
    return text


def column_state(variant: dict) -> str:
    """One column's own state: waiting, loading (its own progress), cached/loaded, generating, done, stopped."""
    status, message = variant["status"], variant.get("message") or ""
    if status == "loading" or not message or message.startswith(status):
        return message or status
    return f"{status} · {message}"


def settings_label(settings: dict) -> str:
    """A column's subtitle: a named preset's description; a custom variant's own settings ("int8, threshold 1.0")."""
    if settings.get("description") and settings["description"] != "custom bitsandbytes settings":
        return settings["description"]
    if settings.get("load_in_8bit"):
        label = f"int8, threshold {settings.get('llm_int8_threshold', 6.0):.1f}"
    elif settings.get("load_in_4bit"):
        label = str(settings.get("bnb_4bit_quant_type", "fp4")) + (
            " + double quant" if settings.get("bnb_4bit_use_double_quant") else "")
        for key, shown in (("bnb_4bit_compute_dtype", "compute"), ("bnb_4bit_quant_storage", "storage")):
            if settings.get(key) and not (key == "bnb_4bit_quant_storage" and settings[key] == "uint8"):
                label += f", {shown} {settings[key]}"
    else:
        return settings.get("description") or ""
    if settings.get("llm_int8_skip_modules"):
        label += ", skips " + "/".join(settings["llm_int8_skip_modules"])
    return label + (f", {settings['dtype']} elsewhere" if settings.get("dtype") else "")


def header_markdown(variant: dict, is_reference: bool) -> str:
    role = " · reference" if is_reference else ""
    summary = settings_label(variant.get("settings", {}))
    return (f"### {esc(variant['name'])}{role} <small>({esc(column_state(variant))})</small>\n"
            f"<small>{esc(summary)}</small>")


def request_state(frame: dict) -> str:
    """What the whole request is doing, in a word or two."""
    statuses = [v["status"] for v in frame["variants"]]
    if frame["done"]:
        return "Stopped." if "stopped" in statuses else "Done."
    if "loading" in statuses:
        return "Stopping…" if frame.get("stopping") else "Loading the models…"
    if "generating" in statuses:
        return "Stopping…" if frame.get("stopping") else "Generating…"
    if "stopped" in statuses:
        return "Stopped; scoring the tokens generated so far…"
    return "Scoring agreement with fp32…"


def status_line(frame: dict) -> str:
    parts = [f"**{esc(v['name'])}**: {esc(v.get('message') or v['status'])}" for v in frame["variants"]]
    lines = [f"{request_state(frame)} " + " · ".join(parts)]
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


def _all_loaded(frame: dict) -> bool:
    return all(v["status"] != "loading" for v in frame["variants"])


def loaded_just_now(frame: dict, previous: dict | None) -> bool:
    """True on the first frame where every variant has loaded (or failed) and one has a footprint:
    the moment to draw the bar chart, once (re-drawing it on every token makes it flicker)."""
    return bool(footprint_rows(frame)) and _all_loaded(frame) and not (previous is not None and _all_loaded(previous))


def gib(value: int) -> str:
    return f"{value / 2**30:.2f} GiB" if value >= 2**30 else mib(value)


def memory_markdown(snapshot: dict, budget_bytes: int, resident_bytes: int, limits: dict | None = None) -> str:
    """The live memory line, the loader's budget, and (`limits`: `resources.describe()`) the limit in force."""
    if snapshot.get("cuda_allocated_bytes") is not None:
        live = f"VRAM allocated **{mib(snapshot['cuda_allocated_bytes'])}** (each variant's peak is under its column)"
    else:
        live = f"process RAM **{mib(snapshot['process_rss_bytes'])}** (peak {mib(snapshot['process_rss_peak_bytes'])})"
    text = (f"{live} · available {mib(snapshot['device_available_bytes'])} of {mib(snapshot['device_total_bytes'])}"
            f"  \nloader cache: {mib(resident_bytes)} of a {mib(budget_bytes)} budget")
    if limits:
        text += (f"  \nlimit: {gib(limits['memory_limit_bytes'])} ({esc(limits['memory_limit_source'])})"
                 f" · {limits['cpu_count']} CPUs ({esc(limits['cpu_source'])})")
    return text


def cache_rows(entries: list[dict]) -> list[list[Any]]:
    return [[e["model"], e["preset"], round(e["footprint_bytes"] / MiB, 1), "yes" if e["in_use"] else ""]
            for e in entries]


# -- agreement with fp32 ----------------------------------------------------------
# ColorBrewer YlOrBr: sequential and colour-blind safe. A shaded token carries its own dark text
# (#111: 7.3:1 on the darkest step, #ec7014) in both themes; an unshaded one keeps the page's text colour,
# so it reads on the light and the dark background alike (tests/test_browser.py measures both).
KL_STEPS = [(0.01, "transparent", "< 0.01"), (0.1, "#fff7bc", "0.01–0.1"), (0.5, "#fec44f", "0.1–0.5"),
            (float("inf"), "#ec7014", "≥ 0.5")]
SHADED_TEXT = "#111"


def tok_style(background: str) -> str:
    """A token's inline style: its KL shade, and dark text wherever there is a shade under it."""
    return "background:transparent" if background == "transparent" else f"background:{background};color:{SHADED_TEXT}"
METRIC_HEADERS = ["variant", "KL mean (nats)", "KL max", "top-1 agreement", "p(fp32's next token)",
                  "perplexity on fp32's text", "first divergence"]
METRIC_NOTE = ("Every variant reads **fp32's answer**, token by token. _p(fp32's next token)_: the probability it "
               "gives the token fp32 wrote next (mean).  \n_perplexity on fp32's text_: how surprised it is by fp32's "
               "answer, not by its own, so a variant more confident on the same tokens can score lower than fp32.")


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
    swatches = "".join(f'<span class="qp-tok" style="{tok_style(color)}">KL {label}</span> '
                       for _, color, label in KL_STEPS)
    return (f'<div class="qp-legend">{swatches}<span class="qp-tok qp-miss">different top-1 token</span> '
            "· click, tap or hover a token for fp32's and the variant's top choices</div>")


def _alternatives(pairs: list) -> str:
    return ", ".join(f"{text!r} {p:.0%}" for text, p in pairs)


def _tip(i: int, t: dict, name: str) -> str:
    """A token's top choices, shown under it while it is hovered, clicked or tapped (CSS :focus, no script)."""
    def q(text: Any) -> str:
        return html.escape(str(text), quote=True)

    return (f'<span class="qp-tip" role="tooltip"><strong>token {i}: {q(repr(t["text"]))}</strong> · '
            f'KL {t["kl"]:.3f} · {q(name)} gives it {t["reference_prob"]:.0%}<br>'
            f'fp32 top: {q(_alternatives(t["fp32_top"]))}<br>{q(name)} top: {q(_alternatives(t["variant_top"]))}</span>')


def token_html(variant: dict) -> str:
    """fp32's continuation token by token, shaded by KL(fp32 ‖ variant); top-1 disagreements outlined."""
    if not variant.get("token_scores"):
        return ""
    spans = []
    for i, t in enumerate(variant["token_scores"]):
        color = next(c for limit, c, _ in KL_STEPS if t["kl"] < limit)
        cls = "qp-tok" + ("" if t["agree"] else " qp-miss")
        text = esc(t["text"]).replace("\n", "↵<br>")
        spans.append(f'<span class="{cls}" style="{tok_style(color)}" tabindex="0">{text}{_tip(i, t, variant["name"])}</span>')
    return (f'<div class="qp-tokens"><b>{esc(variant["name"])}</b> vs fp32: '
            f'{_fmt(variant.get("top1_agreement"), ".0%")} same top-1<br>{"".join(spans)}</div>')


# -- the command line's table ---------------------------------------------------------
def _cell_mib(value) -> str:
    return "-" if value is None else f"{value / 2**20:.1f}"


def _cell(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def text_table(result: dict) -> str:
    """The CLI's readable table of a final comparison result, then the texts."""
    cuda = any(v.get("placement") for v in result["variants"])  # a CUDA machine: where, and the VRAM peak
    rows = [("variant", "status", "MiB", "x fp32", "KV MiB", "load s", "TTFT s", "tok/s", "tokens", "KL", "top-1", "ppl")
            + (("device", "peak MiB") if cuda else ())]
    ref = result["variants"][0].get("footprint_bytes")
    for v in result["variants"]:
        ratio = f"{ref / v['footprint_bytes']:.2f}x" if ref and v.get("footprint_bytes") else "-"
        load = "cached" if v.get("cache_hit") else _cell(v.get("load_seconds"), ".2f")
        rows.append((v["name"], v["status"], _cell_mib(v.get("footprint_bytes")), ratio,
                     _cell_mib(v.get("kv_cache_bytes")), load, _cell(v.get("ttft_seconds"), ".3f"),
                     _cell(v.get("tokens_per_second"), ".1f"), str(v.get("new_tokens", 0)),
                     _cell(v.get("kl_divergence_mean"), ".4f"), _cell(v.get("top1_agreement"), ".0%"),
                     _cell(v.get("perplexity"), ".2f"))
                    + ((v.get("device") or "-", _cell_mib(v.get("cuda_peak_allocated_bytes"))) if cuda else ()))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("")
    for w in result.get("warnings", []):
        lines.append(f"warning: {w}")
    lines += [v["reading"] for v in result["variants"] if v.get("reading")]
    lines += [f"{v['placement']}{where_figures(v)}" for v in result["variants"] if v.get("placement")]
    for v in result["variants"]:
        lines.append(f"--- {v['name']}" + (f" (error: {v['error']})" if v.get("error") else ""))
        for w in v.get("warnings", []):
            lines.append(f"    note: {w}")
        lines.append(v.get("text", ""))
    return "\n".join(lines)
