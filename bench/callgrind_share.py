"""What a share of a callgrind dump costs: the totals of `python -m bench --callgrind`'s window dumps
(`<impl>-<N>.callgrind.1` next to the run's logs), the part spent in the functions whose name matches a pattern,
and the rest — instructions and callgrind's cycle estimate (bench/run.py `estimated_cycles`) for each (issue 26,
round 14; docs/performance.md).

`python -m bench.callgrind_share [--match base64] DUMP [DUMP ...]`: one line per dump. The Trio floor encodes
and decodes base64 with the standard library and the relay with `pybase64`: `--match base64` compares the rest.
Reads the dumps through `callgrind_annotate` (valgrind's).
"""

from __future__ import annotations

import argparse
import re
import subprocess
from pathlib import Path

from bench.run import estimated_cycles

# callgrind_annotate's function lines: one column per event ("1,234 (5.6%)", a bare "0", or "." for none), then
# the function's file:name.
_COUNT = re.compile(r"[\d,]+(?: \([^)]*\))?|\.")
_LINE = re.compile(r"^((?:\s*(?:[\d,]+(?: \([^)]*\))?|\.))+)\s+(\S.*)$")


def function_counts(annotated: str) -> tuple[dict[str, int], list[tuple[str, dict[str, int]]]]:
    """`callgrind_annotate --inclusive=no --threshold=100` output -> (the program's totals, [(function, counts)])
    by the event names of its `Events shown:` line."""
    events: list[str] = []
    totals: dict[str, int] = {}
    functions: list[tuple[str, dict[str, int]]] = []
    for line in annotated.splitlines():
        if line.startswith("Events shown:"):
            events = line.split(":", 1)[1].split()
            continue
        match = _LINE.match(line)
        if not events or match is None:
            continue
        columns = _COUNT.findall(match.group(1))
        if len(columns) != len(events):
            continue
        counts = {event: 0 if column == "." else int(column.split()[0].replace(",", ""))
                  for event, column in zip(events, columns, strict=True)}
        if match.group(2).startswith("PROGRAM TOTALS"):
            totals = counts
        else:
            functions.append((match.group(2), counts))
    return totals, functions


def share(annotated: str, pattern: str) -> dict[str, float]:
    """Instructions and estimated cycles (millions) of the whole dump, of the functions matching `pattern` (a
    case-insensitive regular expression) and of the rest."""
    totals, functions = function_counts(annotated)
    matching = re.compile(pattern, re.IGNORECASE)
    part = {event: 0 for event in totals}
    for name, counts in functions:
        if matching.search(name):
            for event, count in counts.items():
                part[event] += count
    rest = {event: totals[event] - part[event] for event in totals}

    def cycles(counts: dict[str, int]) -> float:
        estimate = estimated_cycles(counts)
        return float("nan") if estimate is None else estimate / 1e6

    return {"instructions": totals["Ir"] / 1e6, "cycles": cycles(totals),
            "matched_instructions": part["Ir"] / 1e6, "matched_cycles": cycles(part),
            "rest_instructions": rest["Ir"] / 1e6, "rest_cycles": cycles(rest)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--match", default="base64", help="a regular expression on function names (default base64)")
    parser.add_argument("dumps", nargs="+", type=Path)
    args = parser.parse_args(argv)
    for dump in args.dumps:
        annotated = subprocess.run(["callgrind_annotate", "--inclusive=no", "--threshold=100", str(dump)],
                                   capture_output=True, text=True, check=True).stdout
        s = share(annotated, args.match)
        print(f"{dump}: {s['instructions']:.1f} M instructions, {s['cycles']:.1f} M est. cycles; "
              f"{args.match}: {s['matched_instructions']:.1f}, {s['matched_cycles']:.1f}; "
              f"the rest: {s['rest_instructions']:.1f}, {s['rest_cycles']:.1f}", flush=True)


if __name__ == "__main__":
    main()
