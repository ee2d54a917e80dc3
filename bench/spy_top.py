"""Where a py-spy profile's samples go: `python -m bench.spy_top PROFILE.txt` reads py-spy's `raw` output (collapsed
stacks, `frame;frame;... count`: `python -m bench --py-spy raw`) and prints the share of the samples spent in each
layer of the stack (own time, by the file of the innermost frame) and the functions with the most samples, own and
inclusive. The layers are what docs/performance.md names: the kernel's socket calls as Trio makes them, Trio's
scheduler and cancel scopes, hypercorn + wsproto (the browser's socket), `websockets` (the agent's), the HTTP client
(per reply), JSON and base64, the relay's own modules.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^():]*)(?::\d+)?\)$")

LAYERS = [
    ("socket calls (send/recv/epoll, as Trio makes them)", ("trio/_socket.py", "trio/_highlevel_socket.py",
                                                          "trio/_core/_io_epoll.py", "socket.py")),
    ("threads (Trio's thread cache: the session journal, DNS)", ("trio/_core/_thread_cache.py", "trio/_threads.py",
                                                                 "threading.py")),
    ("the relay's own modules", ("relay/",)),
    ("Quart", ("quart",)),
    ("Trio's scheduler, cancel scopes, channels, locks", ("trio/", "outcome/", "contextlib.py", "<attrs generated")),
    ("hypercorn + wsproto (the browser's socket)", ("hypercorn/", "wsproto/")),
    ("websockets (the agent's socket)", ("websockets/",)),
    ("HTTP client (httpx2, httpcore2, h11)", ("httpx", "httpcore", "h11/")),
]


def layer_of(path: str) -> str:
    for name, markers in LAYERS:
        if any(path.startswith(marker) or "/" + marker in path for marker in markers):
            return name
    return "standard library and the rest (JSON, base64, typing, abc, logging, metrics)"


def main(argv: list[str]) -> None:
    own_layer: Counter[str] = Counter()
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in Path(argv[0]).read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        leaf = _FRAME.match(frames[-1])
        own_layer[layer_of(leaf.group("file") if leaf else frames[-1])] += n
        own[re.sub(r":\d+\)$", ")", frames[-1])] += n
        for name in {re.sub(r":\d+\)$", ")", frame) for frame in frames}:
            inclusive[name] += n
    print(f"{total} samples")
    print("\nown time by layer:")
    for name, n in own_layer.most_common():
        print(f"  {100 * n / total:5.1f}%  {name}")
    print("\nown time, top functions:")
    for name, n in own.most_common(15):
        print(f"  {100 * n / total:5.1f}%  {name}")
    print("\ninclusive, top functions below the run loop:")
    shown = 0
    for name, n in inclusive.most_common():
        if n > 0.9 * total:
            continue
        print(f"  {100 * n / total:5.1f}%  {name}")
        shown += 1
        if shown == 25:
            break


if __name__ == "__main__":
    main(sys.argv[1:])
