"""relay/server/seats.py: the machine-wide caps of `serve --workers N` in one shared file, with no processes: the
conversations' cap holds across workers, a dead worker's seats are freed, and the avatar budget is the machine's."""

from __future__ import annotations

import os

from relay.server.admission import AdmissionRefused, Registry
from relay.server.seats import AVATARS, Seats, SharedAvatarBudget, create_seats_file


def test_shared_seats_cap_the_whole_relay_and_a_dead_workers_seats_are_freed() -> None:
    fd = create_seats_file(2)
    try:
        first, second = Seats(fd, 2, 0, 3), Seats(fd, 2, 1, 3)
        assert [first.take(), first.take(), second.take(), second.take(), first.take()] == [True] * 3 + [False] * 2
        assert first.taken() == second.taken() == 3
        second.give_back()
        assert first.take() and not second.take()
        first.clear(0)  # worker 0 died holding three
        assert second.taken() == 0
        assert [second.take(), second.take(), second.take(), second.take()] == [True] * 3 + [False]
        first.close()
        second.close()
    finally:
        os.close(fd)


async def test_a_registry_with_shared_seats_refuses_when_the_relay_is_full() -> None:
    fd = create_seats_file(2)
    try:
        other = Seats(fd, 2, 1, 2)
        registry = Registry(2, 10, shared=Seats(fd, 2, 0, 2))
        assert other.take()
        async with registry.admit("a"):
            assert not registry.under_capacity and not registry.ready
            try:
                async with registry.admit("b"):
                    raise AssertionError("admitted over the relay's cap")
            except AdmissionRefused as exc:
                assert "maximum number of conversations" in str(exc)
        assert registry.under_capacity and other.taken() == 1
    finally:
        os.close(fd)


async def test_the_avatar_budget_is_the_machines_and_a_dead_workers_seats_are_cleared() -> None:
    fd = create_seats_file(2)
    try:
        mine = SharedAvatarBudget(Seats(fd, 2, 0, 2, AVATARS))
        theirs = SharedAvatarBudget(Seats(fd, 2, 1, 2, AVATARS))
        conversations = Seats(fd, 2, 0, 5)
        assert await mine.take_avatar("a") and await theirs.take_avatar("b")
        assert not await mine.take_avatar("c") and not await theirs.take_avatar("d")
        assert conversations.taken() == 0  # the two kinds of seats are counted apart
        await mine.give_back_avatar("a")
        await mine.give_back_avatar("a")  # twice: given back once
        assert await theirs.take_avatar("e") and not await mine.take_avatar("f")
        assert conversations.take()
        Seats(fd, 2, 0, 0).clear(1)  # the supervisor, once worker 1 has died: its avatar seats go too
        assert await mine.take_avatar("g") and conversations.taken() == 1
    finally:
        os.close(fd)
