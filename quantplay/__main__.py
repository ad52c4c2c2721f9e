"""Command line: python -m quantplay compare | presets | models."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from . import catalog
from .presets import PRESETS


def _fmt_mib(value) -> str:
    return "-" if value is None else f"{value / 2**20:.1f}"


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def render_table(result: dict) -> str:
    """A readable table of a final comparison result, then the texts."""
    rows = [("variant", "status", "MiB", "x fp32", "KV MiB", "load s", "TTFT s", "tok/s", "tokens", "KL", "top-1", "ppl")]
    ref = result["variants"][0].get("footprint_bytes")
    for v in result["variants"]:
        ratio = f"{ref / v['footprint_bytes']:.2f}x" if ref and v.get("footprint_bytes") else "-"
        load = "cached" if v.get("cache_hit") else _fmt(v.get("load_seconds"), ".2f")
        rows.append((v["name"], v["status"], _fmt_mib(v.get("footprint_bytes")), ratio,
                     _fmt_mib(v.get("kv_cache_bytes")), load, _fmt(v.get("ttft_seconds"), ".3f"),
                     _fmt(v.get("tokens_per_second"), ".1f"), str(v.get("new_tokens", 0)),
                     _fmt(v.get("kl_divergence_mean"), ".4f"), _fmt(v.get("top1_agreement"), ".0%"),
                     _fmt(v.get("perplexity"), ".2f")))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("")
    for w in result.get("warnings", []):
        lines.append(f"warning: {w}")
    lines += [v["reading"] for v in result["variants"] if v.get("reading")]
    for v in result["variants"]:
        lines.append(f"--- {v['name']}" + (f" (error: {v['error']})" if v.get("error") else ""))
        for w in v.get("warnings", []):
            lines.append(f"    note: {w}")
        lines.append(v.get("text", ""))
    return "\n".join(lines)


def cmd_compare(args: argparse.Namespace) -> int:
    from .compare import run_comparison
    from .streaming import GenerationSettings

    custom = None
    if args.custom:
        try:
            custom = json.loads(args.custom)
        except json.JSONDecodeError as exc:
            print(f"error: --custom is not valid JSON: {exc}", file=sys.stderr)
            return 2
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, do_sample=args.temperature is not None,
                                  temperature=args.temperature or 0.7, top_p=args.top_p, seed=args.seed,
                                  chat_template=not args.no_chat_template)

    def progress(fraction: float, message: str) -> None:
        print(f"[{fraction:4.0%}] {message}", file=sys.stderr)

    final = None
    seen: dict[str, str] = {}
    try:
        for frame in run_comparison(args.model, args.variants, args.prompt, settings, custom=custom,
                                    device_map=args.device_map, progress=progress):
            final = frame
            for v in frame.variants:  # status lines as they change
                if seen.get(v.name) != v.status and v.status not in ("loading", "generating"):
                    seen[v.name] = v.status
                    print(f"{v.name}: {v.status} {v.message}", file=sys.stderr)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    data = final.to_dict()
    print(json.dumps(data, indent=2, ensure_ascii=False) if args.json else render_table(data))
    return 0 if all(v["status"] == "done" for v in data["variants"]) else 1


def cmd_estimate(args: argparse.Namespace) -> int:
    from .estimate import estimate_model

    try:
        result = estimate_model(args.model, device=args.device)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    where = "VRAM" if result["device"].startswith("cuda") else "RAM"
    print(f"{result['model']}: {result['parameters'] / 1e9:.3f} B parameters ({result['config_source']}); "
          f"{where} available: {result['available_bytes'] / 2**30:.1f} GiB")
    for preset, size in result["estimates"].items():
        print(f"  {preset:7} {size / 2**30:8.2f} GiB  {'fits' if result['fits'][preset] else 'does not fit'}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from . import allocator

    allocator.use_preferred()  # the server's allocator, so the bare baseline, quantplay and its API share it
    from .bench import run_bench, to_markdown

    variants = tuple(v.strip() for v in args.variants.split(",") if v.strip())
    try:
        result = run_bench(args.model, variants, quick=args.quick, random_init=args.random_init, repeats=args.repeats)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2) if args.json else to_markdown(result))
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    from . import diskcache

    if args.action == "clear":
        print(f"removed {diskcache.clear(args.name)} entr(ies) from {diskcache.root()}")
        return 0
    items = diskcache.entries()
    for e in items:
        print(f"{e['id']}  {e['bytes'] / 2**20:8.1f} MiB  {e['name']}")
    total = sum(e["bytes"] for e in items)
    print(f"{len(items)} entr(ies), {total / 2**20:.1f} MiB of a {diskcache.limit_bytes() / 2**20:.0f} MiB limit "
          f"in {diskcache.root()}")
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    if args.json:
        print(json.dumps({name: p.to_dict() for name, p in PRESETS.items()}, indent=2))
    else:
        for name, preset in PRESETS.items():
            print(f"{name:8} {preset.description}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    for name in catalog.choices():
        print(f"{name:40} {catalog.CURATED.get(name, 'local directory')}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m quantplay", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log loads and evictions")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("compare", help="stream fp32 and quantized variants side by side")
    p.add_argument("--model", default=catalog.BUNDLED_NAME)
    p.add_argument("--variants", default="fp32,int8,nf4", help="comma-separated presets: " + ",".join(PRESETS))
    p.add_argument("--custom", help='BitsAndBytesConfig fields as JSON, e.g. \'{"load_in_4bit": true}\'')
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--temperature", type=float, help="sample at this temperature (default: greedy)")
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--no-chat-template", action="store_true")
    p.add_argument("--device-map", default="auto", choices=["auto", "cpu", "cuda:0"])
    p.add_argument("--json", action="store_true", help="print the final result object and nothing else on stdout")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("estimate", help="weight memory of every preset, from the model config alone")
    p.add_argument("--model", default=catalog.BUNDLED_NAME)
    p.add_argument("--device", choices=["cpu", "cuda:0"], help="where the model would live (default: this machine's)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_estimate)

    p = sub.add_parser("bench", help="measure the playground against bare transformers")
    p.add_argument("--model", default=catalog.BUNDLED_NAME)
    p.add_argument("--variants", default="fp32,int8,nf4")
    p.add_argument("--quick", action="store_true", help="one repeat of 16 tokens: checks that it runs")
    p.add_argument("--repeats", type=int, help="A/B repeats (default 7; 1 with --quick)")
    p.add_argument("--random-init", action="store_true",
                   help="random weights from the model's config: speed and memory without the weights")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("cache", help="the disk cache of quantized weights")
    p.add_argument("action", choices=["list", "clear"])
    p.add_argument("name", nargs="?", help="with clear: only entries whose name contains this")
    p.set_defaults(func=cmd_cache)

    p = sub.add_parser("presets", help="list the named presets")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_presets)

    p = sub.add_parser("models", help="list the model choices")
    p.set_defaults(func=cmd_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # quantplay reports its own progress
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
