"""The machine-wide conversation cap of `avatar-relay serve --workers N`: one small shared file that every worker
process maps, holding one counter per worker (its open conversations). A worker takes a seat only if the sum of all
counters is under RELAY_MAX_CONVERSATIONS, under a POSIX record lock, so the whole relay never admits more than the
cap, whichever workers the kernel hands the connections to.

Each worker writes only its own counter; when a worker dies, the supervisor zeroes its counter before starting the
replacement (the dead worker's conversations are gone with it), so a crash never leaks seats. The lock is held for
a few microseconds, never across an await, and the kernel drops it if its holder dies. The file is unlinked from
the start (a temporary file passed to the workers by descriptor): nothing is left on disk. A second set of counters
holds the machine's avatar sessions against RELAY_MAX_AVATAR_SESSIONS (without Redis), the same way. This module
must never block on anything but that lock.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

_SLOT = struct.Struct("<q")
# Counter sets in the file, each one counter per worker: 0 the conversations (RELAY_MAX_CONVERSATIONS), 1 the avatar
# sessions (RELAY_MAX_AVATAR_SESSIONS, counted for the machine when there is no Redis).
CONVERSATIONS, AVATARS = 0, 1
_REGIONS = 2


# After the counters: the machine's client-token uses (`TokenTable`), TOKEN_SLOTS slots of (key digest, expiry in
# Unix seconds, conversations opened, the worker holding its open conversation + 1, or 0).
_TOKEN = struct.Struct("<16sqii")
TOKEN_SLOTS = 16384


def _counters_size(workers: int) -> int:
    return _SLOT.size * workers * _REGIONS


def create_seats_file(workers: int) -> int:
    """A fresh, unlinked, zeroed file with one counter per worker and the token table; returns its descriptor
    (inheritable, for the workers). The caller closes it."""
    handle = tempfile.TemporaryFile()
    fd = os.dup(handle.fileno())
    handle.close()
    os.ftruncate(fd, _counters_size(workers) + _TOKEN.size * TOKEN_SLOTS)
    os.set_inheritable(fd, True)
    return fd


class Seats:
    """A view of one set of shared counters (`region`: CONVERSATIONS or AVATARS): worker `index` of `workers`, at
    most `limit` seats in all."""

    def __init__(self, fd: int, workers: int, index: int, limit: int, region: int = CONVERSATIONS) -> None:
        self._fd = fd
        self._workers = workers
        self._index = index
        self._base = region * workers
        self.limit = limit
        self._map = mmap.mmap(fd, _counters_size(workers) + _TOKEN.size * TOKEN_SLOTS)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        fcntl.lockf(self._fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN)

    def _get(self, index: int) -> int:
        return int(_SLOT.unpack_from(self._map, (self._base + index) * _SLOT.size)[0])

    def _set(self, index: int, value: int) -> None:
        _SLOT.pack_into(self._map, (self._base + index) * _SLOT.size, value)

    def _total(self) -> int:
        return sum(self._get(i) for i in range(self._workers))

    def take(self) -> bool:
        """One seat for this worker if the relay as a whole is under its limit; False otherwise."""
        with self._locked():
            if self._total() >= self.limit:
                return False
            self._set(self._index, self._get(self._index) + 1)
            return True

    def give_back(self) -> None:
        """Return one seat this worker took."""
        with self._locked():
            self._set(self._index, max(0, self._get(self._index) - 1))

    def taken(self) -> int:
        """Seats taken by the whole relay now."""
        with self._locked():
            return self._total()

    def clear(self, index: int) -> None:
        """Forget worker `index`'s seats of every kind, and the open conversations it held on client tokens (the
        supervisor, once that worker has exited)."""
        with self._locked():
            for region in range(_REGIONS):
                _SLOT.pack_into(self._map, (region * self._workers + index) * _SLOT.size, 0)
            base = _counters_size(self._workers)
            for slot in range(TOKEN_SLOTS):
                offset = base + slot * _TOKEN.size
                digest, expires, uses, holder = _TOKEN.unpack_from(self._map, offset)
                if holder == index + 1:
                    _TOKEN.pack_into(self._map, offset, digest, expires, uses, 0)

    def begin_token_use(self, digest: bytes, expires: int, allowed: int, now: int) -> str:
        """Open one conversation on the token whose key is `digest` (16 bytes), valid until `expires` (Unix
        seconds): "ok", "busy" (a conversation of it is open), "used" (`allowed` opened already) or "full" (the
        table holds TOKEN_SLOTS live tokens). Open addressing; an expired slot is reused."""
        with self._locked():
            base = _counters_size(self._workers)
            start = int.from_bytes(digest[:4], "little") % TOKEN_SLOTS
            free: int | None = None
            for step in range(TOKEN_SLOTS):
                offset = base + ((start + step) % TOKEN_SLOTS) * _TOKEN.size
                found, until, uses, holder = _TOKEN.unpack_from(self._map, offset)
                if found == digest and until >= now:
                    if holder:
                        return "busy"
                    if uses >= allowed:
                        return "used"
                    _TOKEN.pack_into(self._map, offset, digest, max(until, expires), uses + 1, self._index + 1)
                    return "ok"
                if until < now and not holder and free is None:
                    free = offset
                if until == 0 and not holder:
                    break  # never used: the key is not further on
            if free is None:
                return "full"
            _TOKEN.pack_into(self._map, free, digest, expires, 1, self._index + 1)
            return "ok"

    def end_token_use(self, digest: bytes) -> None:
        """The conversation this worker opened on the token `digest` has ended."""
        with self._locked():
            base = _counters_size(self._workers)
            start = int.from_bytes(digest[:4], "little") % TOKEN_SLOTS
            for step in range(TOKEN_SLOTS):
                offset = base + ((start + step) % TOKEN_SLOTS) * _TOKEN.size
                found, until, uses, holder = _TOKEN.unpack_from(self._map, offset)
                if found == digest and holder == self._index + 1:
                    _TOKEN.pack_into(self._map, offset, digest, until, uses, 0)
                    return
                if until == 0 and not holder:
                    return

    def close(self) -> None:
        self._map.close()


class SharedAvatarBudget:
    """RELAY_MAX_AVATAR_SESSIONS for the whole machine under `serve --workers N` (an `AvatarBudget`,
    relay.avatars.budget): a seat of the AVATARS counters per session this worker holds."""

    def __init__(self, seats: Seats) -> None:
        self.seats = seats
        self.held: set[str] = set()

    async def take_avatar(self, seat: str) -> bool:
        if not self.seats.take():
            return False
        self.held.add(seat)
        return True

    async def give_back_avatar(self, seat: str) -> None:
        if seat in self.held:
            self.held.discard(seat)
            self.seats.give_back()
