"""The process's memory budget: reservations wait their turn, first come first served, and a
request that cannot get its memory in time is refused with 503 instead of allocating."""

from __future__ import annotations

import asyncio

import pytest

from cropseg_core.errors import UnavailableError
from cropseg_core.settings import MemoryLimits
from cropseg_core.web.limits import MIB, MemoryBudget


def budget(total_mib: int, wait_s: float = 1.0) -> MemoryBudget:
    """A budget of exactly ``total_mib``: a limit whose share is that much above the process."""
    made = MemoryBudget(MemoryLimits(limit_mib=1, wait_s=wait_s), default_limit_mib=1, retry_after_s=3)
    made._total = total_mib * MIB  # the limit's share less this test process's RSS would vary
    return made


def test_reservations_beyond_the_budget_wait_and_run_in_arrival_order() -> None:
    async def scenario() -> list[str]:
        memory, order = budget(100), []

        async def request(name: str, mib: int, hold_s: float) -> None:
            async with memory.reserve(mib * MIB, name):
                order.append(name)
                assert memory.reserved <= memory.total_bytes
                await asyncio.sleep(hold_s)

        await asyncio.gather(
            request("large-1", 70, 0.2),
            request("large-2", 70, 0.1),
            request("small", 10, 0),  # fits beside large-1, yet waits: no overtaking
        )
        assert memory.reserved == 0
        return order

    assert asyncio.run(scenario()) == ["large-1", "large-2", "small"]


def test_a_request_that_waits_too_long_gets_503_with_what_it_needs() -> None:
    async def scenario() -> None:
        memory = budget(100, wait_s=0.1)
        async with memory.reserve(90 * MIB, "first"):
            with pytest.raises(UnavailableError, match=r"about 50 MiB .* hold 90 of its 100 MiB") as refused:
                async with memory.reserve(50 * MIB, "a 2.0 MP image"):
                    pytest.fail("granted beyond the budget")
            assert refused.value.headers == {"Retry-After": "3"}
        assert memory.reserved == 0
        assert not memory._waiting

    asyncio.run(scenario())


def test_a_cancelled_waiter_leaves_nothing_reserved_and_lets_the_next_one_in() -> None:
    async def scenario() -> None:
        memory = budget(100)
        holder_done = asyncio.Event()

        async def holder() -> None:
            async with memory.reserve(80 * MIB, "holder"):
                await holder_done.wait()

        async def waiter(mib: int) -> None:
            async with memory.reserve(mib * MIB, "waiter"):
                await asyncio.sleep(0)

        held = asyncio.create_task(holder())
        await asyncio.sleep(0)
        big = asyncio.create_task(waiter(60))  # waits for the holder
        small = asyncio.create_task(waiter(10))  # waits behind big
        await asyncio.sleep(0.05)
        big.cancel()  # the client went away
        await asyncio.wait_for(small, 1)  # now first in line, and it fits
        holder_done.set()
        await held
        assert memory.reserved == 0
        assert not memory._waiting

    asyncio.run(scenario())


def test_a_request_larger_than_the_budget_runs_alone() -> None:
    async def scenario() -> None:
        memory = budget(100)
        async with memory.reserve(500 * MIB, "a 40 MP image"):
            assert memory.reserved == memory.total_bytes
        assert memory.reserved == 0

    asyncio.run(scenario())


def test_the_budget_is_the_limits_share_less_what_the_process_holds() -> None:
    memory = MemoryBudget(
        MemoryLimits(limit_mib=4096, budget_share=0.5), default_limit_mib=1, retry_after_s=1
    )
    total = memory.settle()
    assert 0 < total < 2048 * MIB
    assert memory.settle() == total  # measured once
