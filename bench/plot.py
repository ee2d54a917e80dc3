"""Draw a benchmark report (`bench/results/*.json`) as a PNG: against N, CPU per conversation-second, audio
forwarding p50/p99, set-up over the slower upstream and memory per conversation, the relay next to the Trio floor
and the asyncio baseline on the same axes. With several runs of one N (`--repeat`) the median is drawn and the
range as an error bar. `python -m bench.plot RESULT.json [MORE.json ...] docs/perf.png` (several reports are
merged, e.g. a curve's low and high N run separately). Needs matplotlib (the `bench` extra); nothing else in the
benchmark does.
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

STYLES = {"relay": ("tab:blue", "o"), "baseline": ("tab:gray", "s"), "trio_floor": ("tab:green", "D"),
          "naive": ("tab:orange", "^")}
EXTRA = [("tab:purple", "v"), ("tab:brown", "P"), ("tab:pink", "X")]


def saturated(row: dict[str, Any]) -> bool:
    """A run whose CPU per conversation-second is understated: errors, frames still queued, not all ready, or audio
    forwarded 50 ms late at the median (the process or the rig behind real time: fewer events handled)."""
    p50 = row["forwarding"]["p50"]
    return bool(row["errors"] or row["frames_lost"] or row["cpu_ms_per_conversation_second"] is None
                or p50 is None or p50 > 50)


def _series(rows: list[dict[str, Any]], value: Callable[[dict[str, Any]], float | None]
            ) -> tuple[list[int], list[float], list[list[float]]]:
    """N, the median of `value` over the runs of each N, and the distance to its min and max."""
    by_n: dict[int, list[float]] = {}
    for row in rows:
        v = value(row)
        if v is not None:
            by_n.setdefault(row["clients"], []).append(v)
    ns = sorted(by_n)
    medians = [statistics.median(by_n[n]) for n in ns]
    spread = [[m - min(by_n[n]) for n, m in zip(ns, medians, strict=True)],
              [max(by_n[n]) - m for n, m in zip(ns, medians, strict=True)]]
    return ns, medians, spread


def plot(report: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    (cpu_ax, fwd_ax), (setup_ax, rss_ax) = axes
    impls = list(dict.fromkeys(r["impl"] for r in report["rows"]))
    extra = iter(EXTRA)
    for impl in impls:
        # A relay run from another source tree (`--relay-src NAME=DIR`, e.g. `relay26`) is drawn as the relay.
        style = STYLES.get(impl) or (STYLES["relay"] if impl.startswith("relay") else None)
        color, marker = style or next(extra, ("black", "."))
        rows = [r for r in report["rows"] if r["impl"] == impl]
        clean = [r for r in rows if not saturated(r)]

        def draw(ax: Any, chosen: list[dict[str, Any]], value: Callable[[dict[str, Any]], float | None],
                 label: str, style: str = "-", *, color: str = color, marker: str = marker) -> None:
            ns, medians, spread = _series(chosen, value)
            if ns:
                ax.errorbar(ns, medians, yerr=spread, color=color, marker=marker, linestyle=style, capsize=2,
                            label=label, markersize=4)

        draw(cpu_ax, clean, lambda r: r["cpu_ms_per_conversation_second"], impl)
        draw(fwd_ax, rows, lambda r: r["forwarding"]["p99"], f"{impl} p99")
        draw(fwd_ax, rows, lambda r: r["forwarding"]["p50"], f"{impl} p50", ":")
        draw(setup_ax, rows, lambda r: r["setup_over_upstream_p50"], f"{impl} p50")
        draw(rss_ax, clean, lambda r: None if r["rss_mb_per_conversation"] is None
             else r["rss_mb_per_conversation"] * 1024, impl)
    cpu_ax.set_title("CPU of the process under test, ms per conversation-second\n(saturated runs not drawn: errors, "
                     "lost frames, or forwarding p50 > 50 ms)",
                     fontsize=9)
    fwd_ax.set_title("browser -> agent audio forwarding, ms", fontsize=9)
    fwd_ax.axhline(50, color="tab:red", linewidth=0.8, label="50 ms")
    fwd_ax.set_yscale("log")
    setup_ax.set_title("set-up p50 over the slower upstream, ms (sequential yardsticks pay the sum)", fontsize=9)
    setup_ax.set_yscale("symlog", linthresh=10)
    rss_ax.set_title("resident memory per open conversation, KiB (RSS at mid-run minus idle)", fontsize=9)
    for ax in axes.flat:
        ax.set_xscale("log")
        ax.set_xlabel("concurrent conversations (N)")
        ax.legend(fontsize=7)
        ax.grid(True, which="major", linewidth=0.3)
    machine = report["machine"]
    fig.suptitle(f"{report['avatar']}, {report['chunk_ms']} ms chunks, {report['duration_s']:g} s per run; "
                 f"{machine['cpus']} CPUs ({machine['cpu_model']}), shared with the load generator, the simulators "
                 "and other work; median of the runs, bars: min..max", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def merged(paths: list[Path]) -> dict[str, Any]:
    """Several reports as one (the first one's machine and settings; every row)."""
    reports = [orjson.loads(p.read_bytes()) for p in paths]
    first = dict(reports[0])
    first["rows"] = [row for report in reports for row in report["rows"]]
    return first


if __name__ == "__main__":
    plot(merged([Path(p) for p in sys.argv[1:-1]]), Path(sys.argv[-1]))
