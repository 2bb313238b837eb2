"""Run every benchmark in one go and write `RESULTS.md` and `ratios.png` (the one command in README).

    python benchmarks/run.py            # the full run (about 10 minutes on 2 cores)
    python benchmarks/run.py --quick    # a tiny run of everything, to check it all still works

Each benchmark starts the emulator in its own process and each contender in another, so a figure is
the client's cost alone. Results are written, never edited by hand: change a benchmark and run this.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import BENCHMARKS, Figure, as_dict, machine, ratio_figures
from _plot import plot_ratios

COMMAND = "python benchmarks/run.py"


def decoder_figures(quick: bool = False) -> list[Figure]:
    """Benchmark 3 as figures: MB/s and lines/s, ratios to msgspec decoding pre-split lines."""
    import bench_decoder

    size = bench_decoder.MIB if quick else 64 * bench_decoder.MIB
    measured = bench_decoder.run(size, repeats=1 if quick else 5)
    ours, limit, stdlib = measured
    names = {ours.name: "mjasync", limit.name: "msgspec pre-split", stdlib.name: "json.loads per line"}
    bench = "3 ndjson decoder"
    by_rate = {names[f.name]: f.megabytes_per_second for f in measured}
    by_lines = {names[f.name]: f.lines_per_second for f in measured}
    note = f"{size // bench_decoder.MIB} MiB cut at random chunk boundaries"
    return [
        *ratio_figures(
            bench,
            "throughput",
            "MB/s",
            by_rate,
            baseline="msgspec pre-split",
            targets={"mjasync": (">=", 0.8)},
            notes={"mjasync": note},
        ),
        *ratio_figures(bench, "lines", "lines/s", by_lines, baseline="msgspec pre-split"),
    ]


def _module_run(name: str) -> Callable[[bool], list[Figure]]:
    def run(quick: bool) -> list[Figure]:
        figures: list[Figure] = importlib.import_module(name).run(quick)
        return figures

    return run


BENCHES: dict[str, Callable[[bool], list[Figure]]] = {
    "1": _module_run("bench_fanout"),
    "2": _module_run("bench_stream"),
    "3": decoder_figures,
    "4": _module_run("bench_scale"),
    "5": _module_run("bench_polling"),
    "6": _module_run("bench_capacity"),
    "7": _module_run("bench_scale_out"),
}


def _format(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def markdown(figures: Sequence[Figure], info: dict[str, object], command: str, seconds: float) -> str:
    """RESULTS.md: where and how the figures were taken, a table per benchmark, the plot."""
    versions = info["versions"]
    assert isinstance(versions, dict)
    lines = [
        "# Benchmark results",
        "",
        f"Written by `{command}` on {info['date']} in {seconds / 60:.1f} min; do not edit by hand.",
        "What each benchmark measures, and why a figure is what it is: [README.md](README.md).",
        "",
        f"- Machine: {info['cpu']}, {info['cores']} cores, {info['os']}",
        f"- Python {info['python']}; " + ", ".join(f"{name} {v}" for name, v in versions.items()),
        "",
        "![ratios](ratios.png)",
        "",
    ]
    for bench in dict.fromkeys(f.bench for f in figures):
        lines += [
            f"## {bench}",
            "",
            "| contender | metric | value | ratio | target | met |",
            "|---|---|---:|---:|---|---|",
        ]
        mine = [f for f in figures if f.bench == bench]
        # A benchmark of behaviour (6) sets no contender as the baseline: its rows have no ratio.
        ratios = any(f.ratio is not None for f in mine)
        for f in mine:
            ratio = ("baseline" if ratios else "–") if f.ratio is None else f"{f.ratio:.3g}×"
            met = "" if f.met is None else ("yes" if f.met else "**no**")
            value = f"{_format(f.value)} {f.unit}"
            note = f" ({f.note})" if f.note else ""
            lines.append(f"| {f.contender}{note} | {f.metric} | {value} | {ratio} | {f.target} | {met} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that everything runs")
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHES), help="run only these benchmarks")
    parser.add_argument(
        "--out", type=Path, default=None, help="where to write RESULTS.md, ratios.png and results.json"
    )
    args = parser.parse_args(argv)
    out: Path = args.out or (BENCHMARKS if not args.quick else Path.cwd())
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    figures: list[Figure] = []
    for key in args.only or sorted(BENCHES):
        print(f"== benchmark {key}", flush=True)
        found = BENCHES[key](args.quick)
        for figure in found:
            ratio = "" if figure.ratio is None else f"  {figure.ratio:.3g}×"
            met = "" if figure.met is None else ("  met" if figure.met else "  MISSED")
            print(
                f"   {figure.contender:<22} {figure.metric:<28} {_format(figure.value):>10} {figure.unit}{ratio}{met}"
            )
        figures += found
    seconds = time.perf_counter() - started
    command = (
        COMMAND + (" --quick" if args.quick else "") + (f" --only {' '.join(args.only)}" if args.only else "")
    )
    info = machine()
    (out / "RESULTS.md").write_text(markdown(figures, info, command, seconds))
    (out / "results.json").write_text(
        json.dumps({"machine": info, "figures": [as_dict(f) for f in figures]}, indent=1)
    )
    plot_ratios(
        figures, out / "ratios.png", title=f"mjasync benchmarks, {info['date']}: ratios to each baseline"
    )
    missed = [f for f in figures if f.met is False]
    print(f"wrote {out / 'RESULTS.md'} and {out / 'ratios.png'}; {len(missed)} target(s) missed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
