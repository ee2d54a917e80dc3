"""`take_lock`: the audio path's lock taken without a task switch of its own when it is free, and waited for, in
order, when it is not."""

from __future__ import annotations

import trio
import trio.testing

from relay.net.wsclient import take_lock


async def test_a_free_lock_is_taken_without_a_scheduling_point() -> None:
    lock = trio.StrictFIFOLock()
    with trio.testing.assert_no_checkpoints():
        await take_lock(lock)
    assert lock.locked()
    lock.release()


async def test_a_held_lock_is_waited_for_in_order_and_the_wait_can_be_cancelled() -> None:
    lock = trio.StrictFIFOLock()
    await take_lock(lock)
    order: list[str] = []

    async def taker(name: str) -> None:
        await take_lock(lock)
        order.append(name)
        lock.release()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(taker, "first")
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(taker, "second")
        await trio.testing.wait_all_tasks_blocked()
        impatient = trio.CancelScope()

        async def give_up() -> None:
            with impatient:  # a wait for a held lock is cancellable
                await take_lock(lock)
                order.append("impatient")

        nursery.start_soon(give_up)
        await trio.testing.wait_all_tasks_blocked()
        impatient.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert impatient.cancelled_caught and order == []
        lock.release()
    assert order == ["first", "second"] and not lock.locked()
