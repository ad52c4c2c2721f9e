"""Command line: `python -m quantplay COMMAND`, a thin caller of the library, built to be scripted.

Commands:
  compare   stream fp32 and quantized variants of one model side by side; a table, or `--json`
  estimate  weight memory of every preset, from the model's config alone (`--json`)
  inspect   each quantized layer's weight error against the checkpoint, worst first (`--json`, `--csv`)
  bench     measure the playground against bare transformers (`--json`; see docs/benchmarks.md)
  cache     `cache list [--json]` / `cache clear [NAME]`: the disk cache of quantized weights
  presets   the named presets (`--json`)
  models    the model choices: curated Hub ids and allow-listed local directories (`--json`)
  config    every effective setting and where it came from (`--json`)
  serve     start the page, as `python app.py` does (`--host`, `--port`, `--share`)
  evaluate  agreement with fp32 over many prompts, with 95% bootstrap intervals (`--json`, `--csv`)
  loadtest  N gradio_client sessions at once against a running app (`--sessions`, `--url`): JSON figures
  `--version` prints the version.

Every failure ends with one line on stderr, `error: ...`, and an exit code:
  0    done
  1    compare ran, but a variant failed (its row says why)
  2    refused: a bad request or argument, a model that is not available, a malformed setting
  3    out of memory: the memory budget refused the variants, or memory ran out while loading
  4    an operating-system error (a missing or unreadable file, a full disk)
  130  interrupted (Ctrl-C)
Progress and warnings go to stderr; with `--json`, stdout holds the result object and nothing else.
Generation settings default as in the API (`GenerationSettings.from_request`): greedy, top-p 1.0.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from contextlib import closing

from . import catalog, cli_parser, hub, views
from .errors import MemoryBudgetError, QuantplayError
from .presets import PRESETS

# servers (and the bench, which measures one): jemalloc when the machine has it, by re-executing once (allocator.py)
REEXECS = ("serve", "bench")
RUNS_MODELS = ("compare", "bench", "serve", "inspect", "evaluate")  # commands whose torch threads are sized to the CPUs in force
EXIT_OK, EXIT_VARIANT_FAILED, EXIT_REFUSED, EXIT_OUT_OF_MEMORY, EXIT_OS_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130


def cmd_compare(args: argparse.Namespace) -> int:
    from .comparison import run_comparison
    from .sampling import GenerationSettings

    custom = None
    if args.custom:
        try:
            custom = json.loads(args.custom)
        except json.JSONDecodeError as exc:
            raise QuantplayError(f"--custom is not valid JSON: {exc}") from None
    settings = GenerationSettings.from_request(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                               top_p=args.top_p, seed=args.seed,
                                               chat_template=not args.no_chat_template)

    def progress(fraction: float, message: str) -> None:
        print(f"[{fraction:4.0%}] {message}", file=sys.stderr)

    final = None
    seen: dict[str, str] = {}
    frames = run_comparison(args.model, args.variants, args.prompt, settings, custom=custom,
                            device_map=args.device_map, progress=progress)
    with closing(frames):  # on Ctrl-C too: its streams stop and its leases go back
        for frame in frames:
            final = frame
            for v in frame.variants:  # status lines as they change
                if seen.get(v.name) != v.status and v.status not in ("loading", "generating"):
                    seen[v.name] = v.status
                    print(f"{v.name}: {v.status} {v.message}", file=sys.stderr)
    data = final.to_dict()
    print(json.dumps(data, indent=2, ensure_ascii=False) if args.json else views.text_table(data))
    return EXIT_OK if all(v["status"] == "done" for v in data["variants"]) else EXIT_VARIANT_FAILED


def cmd_estimate(args: argparse.Namespace) -> int:
    from .estimator import estimate_model

    result = estimate_model(args.model, device=args.device)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    where = "VRAM" if result.device.startswith("cuda") else "RAM"
    print(f"{result.model}: {result.parameters / 1e9:.3f} B parameters ({result.config_source}); "
          f"{where} available: {result.available_bytes / 2**30:.1f} GiB")
    for preset, size in result.estimates.items():
        print(f"  {preset:7} {size / 2**30:8.2f} GiB  {'fits' if result.fits[preset] else 'does not fit'}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    """Per-layer weight error of one quantized variant: worked out as it loads, before any forward pass."""
    from . import weights
    from .loader import default_cache
    from .presets import QuantPreset, get_preset

    try:
        preset = QuantPreset.from_fields("custom", json.loads(args.custom)) if args.custom else get_preset(args.variant)
    except json.JSONDecodeError as exc:
        raise QuantplayError(f"--custom is not valid JSON: {exc}") from None
    if not preset.quantized:
        raise QuantplayError(f"{preset.name} is not quantized: pick int8, nf4, fp4 or a --custom 8/4-bit config.")
    source = catalog.resolve(args.model, progress=lambda f, m: print(f"[{f:4.0%}] {m}", file=sys.stderr))
    with default_cache().lease(source, preset, args.device_map) as (entry, _):
        report = entry.layer_errors
    if report is None:
        raise QuantplayError(f"{preset.name} of {source.name!r} holds no bitsandbytes linear layer.")
    if args.json:
        print(json.dumps({"model": source.name, "variant": preset.name, **report.to_dict()}, indent=2))
    else:
        print(weights.to_csv(report).rstrip("\n") if args.csv else weights.to_text(source.name, preset.name, report))
    return EXIT_OK


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Agreement with fp32 over many prompts, with bootstrap intervals (evaluate.py)."""
    from . import evaluate

    prompts = evaluate.prompts_from_file(args.prompts) if args.prompts else None
    variants = ["fp32"] + [v.strip() for v in args.variants.split(",") if v.strip() and v.strip() != "fp32"]
    report = evaluate.run_evaluation(args.model, variants, prompts, max_new_tokens=args.max_new_tokens,
                                     resamples=args.resamples,
                                     progress=lambda f, m: print(f"[{f:4.0%}] {m}", file=sys.stderr))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(evaluate.to_csv(report).rstrip("\n") if args.csv else evaluate.to_text(report))
    return EXIT_OK


def cmd_bench(args: argparse.Namespace) -> int:
    # main() already re-executed the bench on the server's allocator (REEXECS), so the bare baseline,
    # quantplay and its API share it
    from .bench import run_bench
    from .bench_report import to_markdown

    variants = tuple(v.strip() for v in args.variants.split(",") if v.strip())
    result = run_bench(args.model, variants, quick=args.quick, random_init=args.random_init, repeats=args.repeats)
    print(json.dumps(result, indent=2) if args.json else to_markdown(result))
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    from . import diskcache

    if args.action == "clear":
        print(f"removed {diskcache.clear(args.name)} entr(ies) from {diskcache.root()}")
        return 0
    items = diskcache.entries()
    if args.json:
        print(json.dumps({"root": str(diskcache.root()), "limit_bytes": diskcache.limit_bytes(),
                          "entries": items}, indent=2))
        return 0
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
    cached = set(hub.cached_models())
    rows = [{"name": name, "description": catalog.CURATED.get(
                name, "in the local Hugging Face cache" if name in cached else "local directory")}
            for name in catalog.choices()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        print(f"{row['name']:40} {row['description']}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from . import config, metrics, resources

    settings = config.current()
    budget = resources.process_memory_budget(settings.memory_budget, "cpu")
    device = metrics.default_device()
    vram = resources.process_memory_budget(settings.vram_budget, device) if device.startswith("cuda") else None
    rows = settings.describe() + resources.config_rows(budget, resources.describe(), vram)  # the limits in force, last
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        width = max(len(r["variable"]) for r in rows)
        shown = [r["value"] or "(empty)" for r in rows]
        value_width = max(map(len, shown))
        for r, value in zip(rows, shown):
            print(f"{r['variable']:{width}}  {value:{value_width}}  {r['source']:11}  {r['help']}")
    return 0


def serve_config(args: argparse.Namespace, config):
    """The process's config with the command's flags over it; sharing stays off unless asked."""
    from dataclasses import replace

    changes = {"server_name": args.host, "server_port": args.port, "share": True if args.share else None}
    return replace(config, **{key: value for key, value in changes.items() if value is not None})


def cmd_serve(args: argparse.Namespace) -> int:
    """The page, as `python app.py` serves it (main() has re-executed with the preferred malloc, as app.py does)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # nothing phones home unless asked (as app.py)
    from . import config as qconfig
    from .ui import build_demo, launch_kwargs

    settings = qconfig.use(serve_config(args, qconfig.current()))
    build_demo(settings).launch(**launch_kwargs(settings))
    return EXIT_OK


def cmd_loadtest(args: argparse.Namespace) -> int:
    """N sessions at once against a running app; JSON on stdout (exit 1 when a session failed)."""
    from .loadtest import run_loadtest

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    figures = run_loadtest(args.url, args.sessions, same_prompt=args.same_prompt, variants=variants,
                           max_new_tokens=args.max_new_tokens, model=args.model, one_by_one=args.one_by_one)
    print(json.dumps(figures, indent=2))
    return EXIT_VARIANT_FAILED if figures["failures"] else EXIT_OK


COMMANDS = {"compare": cmd_compare, "estimate": cmd_estimate, "inspect": cmd_inspect, "evaluate": cmd_evaluate,
            "bench": cmd_bench, "cache": cmd_cache, "presets": cmd_presets, "models": cmd_models, "config": cmd_config,
            "serve": cmd_serve, "loadtest": cmd_loadtest}


def build_parser() -> argparse.ArgumentParser:
    return cli_parser.build_parser(COMMANDS, __doc__)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in REEXECS:  # first, before torch is imported; never on import (a notebook kernel would restart)
        from . import allocator

        allocator.use_preferred()
    from . import config
    from .errors import ConfigError

    try:
        config.use(config.Config.from_env())  # every setting parsed now: a malformed one stops here
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if args.command in RUNS_MODELS:  # before the compute thread starts; the other commands skip importing torch
        from . import resources

        resources.size_torch_threads()  # a 2-CPU container on a 64-core host runs 2 threads, not 64
    return run(args)


def run(args: argparse.Namespace) -> int:
    """Run one parsed command; every failure ends as one `error:` line on stderr and its exit code."""
    try:
        from .hub import download_bars_only

        download_bars_only()  # quantplay reports loads itself; huggingface_hub's download bars reach stderr
        return args.func(args)
    except KeyboardInterrupt:
        return fail("interrupted", EXIT_INTERRUPTED)
    except MemoryBudgetError as exc:
        return fail(str(exc), EXIT_OUT_OF_MEMORY)
    except QuantplayError as exc:
        return fail(str(exc), EXIT_REFUSED)
    except OSError as exc:
        return fail(str(exc), EXIT_OS_ERROR)
    except (MemoryError, RuntimeError) as exc:
        if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":  # torch's, not imported here
            return fail(f"out of memory: {exc}", EXIT_OUT_OF_MEMORY)
        raise


def fail(message: str, code: int) -> int:
    """One line on stderr, whatever the message held."""
    line = " ".join(message.split()) or "failed"
    print(f"error: {line}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
