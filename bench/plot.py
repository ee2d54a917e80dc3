"""Draw a benchmark report (`bench/results/*.json`) as a PNG: p99 latencies and CPU against N, the relay next to
the baseline and the Trio yardsticks. `python -m bench.plot RESULT.json docs/perf.png`. Needs matplotlib (the
`bench` extra); nothing else in the benchmark does.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import orjson


def plot(report: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (latency_ax, cpu_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    # The relay and the asyncio baseline in full; the two Trio yardsticks (bench/naive.py, bench/trio_floor.py)
    # only where they make the point: forwarding p99 and CPU.
    styles = {"relay": ("tab:blue", "o", True), "baseline": ("tab:gray", "s", True),
              "naive": ("tab:orange", "^", False), "trio_floor": ("tab:green", "D", False)}
    for impl, (color, marker, full) in styles.items():
        rows = sorted((r for r in report["rows"] if r["impl"] == impl), key=lambda r: r["clients"])
        if not rows:
            continue
        n = [r["clients"] for r in rows]
        latency_ax.plot(n, [r["forwarding"]["p99"] for r in rows], color=color, marker=marker,
                        label=f"{impl}: audio forwarding p99")
        # CPU per conversation-second from a saturated run (errors, or frames still queued when it ended) is
        # understated: not drawn.
        clean = [r for r in rows if r["errors"] == 0 and r["frames_lost"] == 0]
        cpu_ax.plot([r["clients"] for r in clean], [r["cpu_ms_per_conversation_second"] for r in clean], color=color,
                    marker=marker, label=f"{impl}: CPU ms per conversation-second")
        if not full:
            continue
        latency_ax.plot(n, [r["to_avatar"]["p99"] for r in rows], color=color, marker=marker, linestyle="--",
                        label=f"{impl}: text-to-avatar p99")
        cpu_ax.plot(n, [r.get("cpu_core_share") for r in rows], color=color, marker=marker, linestyle=":",
                    label=f"{impl}: cores used")
    cpu_ax.axhline(1.0, color="tab:red", linewidth=0.8, label="goal: 1 ms per conversation-second")
    latency_ax.axhline(50, color="tab:red", linewidth=0.8, label="50 ms")
    latency_ax.set_xscale("log")
    latency_ax.set_yscale("log")
    latency_ax.set_xlabel("concurrent conversations (N)")
    latency_ax.set_ylabel("ms")
    latency_ax.set_title("p99 added latency")
    latency_ax.legend(fontsize=7)
    cpu_ax.set_xscale("log")
    cpu_ax.set_xlabel("concurrent conversations (N)")
    cpu_ax.set_title("CPU of the process under test (saturated runs not drawn)")
    cpu_ax.legend(fontsize=7)
    machine = report["machine"]
    fig.suptitle(f"{report['avatar']}, {report['chunk_ms']} ms chunks, {report['duration_s']:g} s per run; "
                 f"{machine['cpus']} CPUs ({machine['cpu_model']}), shared with the load generator and simulators",
                 fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    plot(orjson.loads(Path(sys.argv[1]).read_bytes()), Path(sys.argv[2]))
