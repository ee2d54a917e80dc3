"""Run the fault matrix N times and print the table of docs/reliability.md.

    python -m tests.faults.report [N]      (default 3)

Each run of a scenario is a fresh relay and fresh simulators, with a healthy conversation alongside; the numbers
come from the simulators' ledgers (see tests/faults/matrix.py).
"""

from __future__ import annotations

import logging
import sys

import trio

from tests.faults.matrix import SCENARIOS, Measurement, run_scenario


async def main(runs: int) -> int:
    logging.disable(logging.WARNING)
    print("| scenario | runs | sessions created | sessions stopped | max cleanup (s) | healthy completed | "
          "relay at baseline | faulty browser saw |")
    print("|---|---|---|---|---|---|---|---|")
    leaks = 0
    for scenario in SCENARIOS:
        results: list[Measurement] = [await run_scenario(scenario) for _ in range(runs)]
        created = sum(m.created for m in results)
        stopped = sum(m.stopped for m in results)
        leaks += created - stopped
        seen = sorted({("avatar_unavailable, " if m.avatar_unavailable else "")
                       + f"{m.error or '-'} / {m.ended or '(closed)'}" for m in results})
        print(f"| {scenario.name} | {runs} | {created} | {stopped} | "
              f"{max(m.cleanup_seconds for m in results):.3f} | "
              f"{sum(m.healthy_completed for m in results)}/{runs} | "
              f"{sum(m.relay_back_to_baseline for m in results)}/{runs} | {', '.join(seen)} |")
    print(f"\nleaked sessions: {leaks}")
    return 1 if leaks else 0


if __name__ == "__main__":
    raise SystemExit(trio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 3))
