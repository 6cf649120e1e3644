"""The storage contract suite, run on every shipped backend."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from stepflow._planning import visit_id
from stepflow._records import ChangeSet, Claim, VisitChange, VisitRecord
from stepflow._states import ItemStatus as I
from stepflow.ports import Clock, Storage
from stepflow.testing.clock import FakeClock
from stepflow.testing.contract import StorageContract, _result

from ..backends import selected_backends, storage_factory


def _moved_on(claim: Claim, now: float) -> ChangeSet:
    """The result that passes ``claim``'s item on from step ``a`` to arrive at ``b``."""
    moved = _result(claim, I.PROCESSED, {"lease_owner": None, "finished_at": now})
    moved.visits.append(VisitChange(claim.visit.id, expect=I.PROCESSED, status=I.PASSED))
    item = claim.item
    moved.new_visits.append(
        VisitRecord(visit_id(item.id, "b"), item.job_id, item.id, "b", I.AVAILABLE, now, now)
    )
    return moved


class TestShippedStorages(StorageContract):
    """Memory, SQLite and PostgreSQL each keep the storage contract."""

    @pytest.fixture(params=selected_backends())
    def make_storage(
        self, request: pytest.FixtureRequest, tmp_path: Path
    ) -> Iterator[Callable[[Clock], Storage]]:
        with storage_factory(request.param, tmp_path, request) as factory:
            yield factory

    async def test_work_under_way_is_claimed_before_waiting_work(
        self, storage: Storage, clock: FakeClock
    ) -> None:
        """When an exchange cannot claim everything due, a visit its own results made
        available (an item moving on) goes before visits that were already waiting."""
        await self._new_job(storage, clock, n=3, concurrency=5)
        _, [first] = await storage.exchange([], "owner", 1, 30.0)
        moved = _moved_on(first, clock.now())
        results, [second] = await storage.exchange([moved], "owner", 1, 30.0)
        assert not [r for r in results if isinstance(r, Exception)]
        assert (second.visit.item_id, second.visit.step) == (first.item.id, "b")

    async def test_an_arrival_claimed_then_rescued_is_claimed_once_again(
        self, storage: Storage, clock: FakeClock
    ) -> None:
        """A visit claimed as its exchange's own arrival, whose lease then expires, is
        claimed exactly once when its retry comes due, however it was queued before."""
        await self._new_job(storage, clock, n=1, concurrency=5)
        _, [first] = await storage.exchange([], "owner", 1, 30.0)
        moved = _moved_on(first, clock.now())
        _, [arrival] = await storage.exchange([moved], "owner", 1, 30.0)
        clock.advance(31)  # the lease expires; the rescue makes it due again at once
        assert await storage.rescue_expired(lambda job, visit: 0.0) == 1
        results, claims = await storage.exchange([], "owner", 5, 30.0)
        assert results == []
        assert [(c.visit.id, c.visit.token) for c in claims] == [(arrival.visit.id, 2)]
