"""The hand-off queue between the writer and the workers."""

from __future__ import annotations

import anyio
import pytest

from stepflow._handoff import Handoff

pytestmark = pytest.mark.anyio


async def test_waiting_items_come_out_in_order_without_waiting() -> None:
    """Queued items are taken first in, first out, at once."""
    handoff = Handoff[int]()
    for n in range(3):
        handoff.put(n)
    assert len(handoff) == 3
    assert [await handoff.get() for _ in range(3)] == [0, 1, 2]


async def test_a_put_wakes_a_waiting_consumer() -> None:
    """A consumer waiting on an empty queue gets the next item put."""
    handoff = Handoff[str]()
    got: list[str] = []

    async def consume() -> None:
        got.append(await handoff.get())

    async with anyio.create_task_group() as tg:
        tg.start_soon(consume)
        await anyio.wait_all_tasks_blocked()
        handoff.put("claim")
    assert got == ["claim"]


async def test_cancelling_the_woken_consumer_strands_no_item() -> None:
    """A put wakes one waiting consumer; if that one is cancelled right then, the item
    still reaches a consumer (the woken one, or the next), and nothing is lost."""
    handoff = Handoff[str]()
    got: list[str] = []
    scopes: list[anyio.CancelScope] = []

    async def consume() -> None:
        with anyio.CancelScope() as scope:
            scopes.append(scope)
            got.append(await handoff.get())

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(consume)
            await anyio.wait_all_tasks_blocked()
            handoff.put("first")  # wakes the first consumer ...
            scopes[0].cancel()  # ... cancelled before it has run
            await anyio.wait_all_tasks_blocked()
            assert got == ["first"] and len(handoff) == 0
            handoff.put("second")  # whoever still waits takes it, or it stays queued
            await anyio.wait_all_tasks_blocked()
            if len(got) == 1:  # the woken consumer was cancelled: the other took "first"
                assert len(handoff) == 1 and handoff.take_all() == ["second"]
            else:
                assert got == ["first", "second"]


async def test_a_cancelled_sleeper_is_not_woken_later() -> None:
    """A consumer cancelled while waiting leaves no stale wake-up behind."""
    handoff = Handoff[int]()
    with anyio.move_on_after(0.01):
        await handoff.get()
    got: list[int] = []

    async def consume() -> None:
        got.append(await handoff.get())

    async with anyio.create_task_group() as tg:
        tg.start_soon(consume)
        await anyio.wait_all_tasks_blocked()
        handoff.put(7)
    assert got == [7]


async def test_take_all_empties_the_queue() -> None:
    """What was queued and not taken can be taken back whole, at shutdown."""
    handoff = Handoff[int]()
    handoff.put(1)
    handoff.put(2)
    assert handoff.take_all() == [1, 2]
    assert len(handoff) == 0
