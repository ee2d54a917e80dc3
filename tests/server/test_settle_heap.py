"""Once the relay has started, its start-up heap is out of the garbage collector's reach (`settle_heap`): a full
collection, which every conversation waits through, walks only what the conversations made. Checked in a fresh
process (the freeze happens once per process), serving the relay on loopback as `python -m bench` does."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent("""
    import gc
    import trio
    from tests.support.harness import running_relay

    async def main():
        async with running_relay():
            gc.collect()
            print(gc.get_freeze_count(), len(gc.get_objects()), flush=True)

    trio.run(main)
""")


def test_the_start_up_heap_is_frozen_once_the_relay_has_started() -> None:
    result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    frozen, tracked = result.stdout.split()[-2:]
    assert int(frozen) > 50_000  # modules, the app, its settings and clients, the simulators
    assert int(tracked) < int(frozen) / 5  # what a full collection still walks: what was made since
