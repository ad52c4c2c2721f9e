"""The benchmark's report read as markdown: each figure beside its target (docs/benchmarks.md
keeps these tables run by run). Pure: the dict `bench.run_bench` returns in, text out.
"""

from __future__ import annotations

from typing import Any

TARGETS = {"stream_overhead_ratio": 1.05, "api_overhead_ratio": 1.10, "nway_ratio": 1.10, "cache_hit_seconds": 0.05,
           "prequantized_load_ratio": 0.7, "memory_overhead_ratio": 1.3, "evaluate_seconds": 150.0}
AT_LEAST = {"batching_ratio": 3.5}  # targets a figure must reach rather than stay under


def to_markdown(r: dict[str, Any]) -> str:
    def fmt(s):
        if isinstance(s, dict):
            return f"{s['median']:.3f} (min {s['min']:.3f}, max {s['max']:.3f})"
        return "–" if s is None else f"{s:.3f}"

    env = r["environment"]
    lines = [f"Model `{r['model']}`, variants {', '.join(r['variants'])}; {r['repeats']} repeat(s) of {r['new_tokens']} "
             f"new tokens; {env['device']}, {env['threads']} threads, torch {env['torch']}, transformers "
             f"{env['transformers']}, bitsandbytes {env['bitsandbytes']}; {r['date']}.", "",
             "| measure | median (min, max) | target |", "|---|---|---|"]
    for key, target in TARGETS.items():
        value = r.get(key)
        ok = "" if value is None else (" ✓" if (value["median"] if isinstance(value, dict) else value) <= target else " ✗")
        lines.append(f"| `{key}` | {fmt(value)} | ≤ {target}{ok} |")
    vram = any(v.get("vram_peak_bytes") for v in r["per_variant"].values())  # a CUDA run: VRAM per variant
    for key, target in AT_LEAST.items():
        value = r.get(key)
        ok = "" if value is None else (" ✓" if value >= target else " ✗")
        lines.append(f"| `{key}` | {fmt(value)} | ≥ {target}{ok} |")
    lines += [f"| `nway_ratio_interleave` | {fmt(r['nway_ratio_interleave'])} | |",
              f"| `nway_ratio_threads` | {fmt(r['nway_ratio_threads'])} | |",
              f"| `metrics_seconds` | {fmt(r['metrics_seconds'])} | |",
              f"| `metrics_full_pass_seconds` | {fmt(r['metrics_full_pass_seconds'])} | |", "",
              "| variant | cold load s | from disk cache s | decode tok/s | bare tok/s | TTFT s | MiB | bandwidth used |"
              + (" device | VRAM peak MiB |" if vram else ""),
              "|---|---|---|---|---|---|---|---|" + ("---|---|" if vram else "")]
    for name, v in r["per_variant"].items():
        pre = r.get("prequantized_load_seconds", {}).get(name)
        bw = f"{v['bandwidth_fraction']:.0%}" if v["bandwidth_fraction"] else "–"
        peak = v.get("vram_peak_bytes")
        lines.append(f"| {name} | {fmt(r['cold_load_seconds'][name])} | {fmt(pre) if pre else '–'} | "
                     f"{v['decode_tokens_per_second'] or 0:.1f} | {v['bare_tokens_per_second']:.1f} | "
                     f"{v['ttft_seconds'] or 0:.3f} | {v['footprint_bytes'] / 2**20:.1f} | {bw} |"
                     + (f" {v.get('device') or '–'} | {peak / 2**20:.1f} |" if vram and peak else
                        f" {v.get('device') or '–'} | – |" if vram else ""))
    m, q = r["memory"], r["memory_quantizing_on_load"]
    lines += ["", f"Memory: peak RSS − RSS before ÷ footprints = {m['ratio']:.2f} loading from the disk cache, "
              f"{q['ratio']:.2f} quantizing on load; {m['left_after_unload_bytes'] / 2**20:.0f} MiB left after "
              f"unloading everything. Read bandwidth {(r['read_bandwidth_bytes_per_s'] or 0) / 1e9:.1f} GB/s."]
    lines += [f"- {n}" for n in r["notes"]]
    return "\n".join(lines)
