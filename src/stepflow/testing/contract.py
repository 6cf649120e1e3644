"""The storage contract suite: what every :class:`~stepflow.ports.Storage` must do.

Design decision: the contract is a pytest test class a host subclasses with one
fixture, ``make_storage``, so a storage of its own is held to exactly the rules the
shipped backends are held to (stepflow runs this class on memory, SQLite and
PostgreSQL). The tests talk to the port directly — no orchestrator, no handlers — so a
failure names the storage method that broke the contract.

Usage::

    import pytest
    from stepflow.testing.contract import StorageContract

    class TestMyStorage(StorageContract):
        @pytest.fixture
        def make_storage(self):
            return lambda clock: MyStorage(clock=clock)

The tests are ``async`` and use the anyio pytest plugin (``anyio_backend`` fixture).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from .._errors import DuplicateAction, InvalidInput, LeaseLost, NotFound, StaleWrite
from .._planning import new_item, visit_id
from .._records import (
    ChangeSet,
    Claim,
    EventDraft,
    JobRecord,
    StepInfo,
    VisitChange,
    VisitRecord,
)
from .._states import ItemStatus, JobStatus
from ..ports import Clock, Storage
from .clock import FakeClock

__all__ = ["StorageContract"]

I = ItemStatus


def _job(auto: bool = True, concurrency: int = 2) -> JobRecord:
    now = 1_700_000_000.0
    return JobRecord(
        id=uuid.uuid4().hex,
        pipeline="contract",
        version="1",
        definition_hash="0" * 64,
        definition={
            "name": "contract",
            "steps": [{"key": "a", "handler": "h"}, {"key": "b", "handler": "h"}],
        },
        steps=(StepInfo("a", True, concurrency), StepInfo("b", True, concurrency)),
        status=JobStatus.DRAFT,
        auto_process=auto,
        metadata={},
        idempotency_key=None,
        created_by="contract",
        created_at=now,
        updated_at=now,
    )


def _creation(job: JobRecord, n: int, now: float) -> ChangeSet:
    change = ChangeSet(job.id, actor="contract", job_status=JobStatus.PENDING)
    change.events.append(EventDraft("job.created"))
    for k in range(n):
        item = new_item(job.id, f"k{k}", {"k": k}, 0, now)
        change.new_items.append(item)
        change.new_visits.append(
            VisitRecord(visit_id(item.id, "a"), job.id, item.id, "a", I.AVAILABLE, now, now)
        )
    return change


def _result(
    claim: Claim, status: ItemStatus, fields: dict[str, Any] | None = None, **change: Any
) -> ChangeSet:
    """The change a worker hands back for ``claim``: its visit ends in ``status``."""
    visit = VisitChange(
        claim.visit.id,
        expect=I.PROCESSING,
        status=status,
        token=claim.visit.token,
        fields=fields or {},
    )
    return ChangeSet(claim.job.id, visits=[visit], **change)


@pytest.mark.anyio
class StorageContract:
    """Subclass and provide ``make_storage`` (a fixture returning ``clock -> Storage``)."""

    @pytest.fixture
    def clock(self) -> FakeClock:
        return FakeClock()

    @pytest.fixture
    async def storage(
        self, make_storage: Callable[[Clock], Storage], clock: FakeClock
    ) -> AsyncIterator[Storage]:
        store = make_storage(clock)
        await store.start()
        try:
            yield store
        finally:
            await store.aclose()

    async def _new_job(
        self, storage: Storage, clock: FakeClock, n: int = 3, **kwargs: Any
    ) -> JobRecord:
        job = _job(**kwargs)
        stored, created = await storage.create_job(job, _creation(job, n, clock.now()))
        assert created
        return stored

    async def test_create_job_writes_items_counts_and_events(
        self, storage: Storage, clock: FakeClock
    ) -> None:
        """A created job has its items at the first step, exact counters and gapless events."""
        job = await self._new_job(storage, clock, n=3)
        progress = await storage.progress(job.id)
        assert progress.job.status is JobStatus.PENDING
        assert progress.counts["a"] == {I.AVAILABLE: 3}
        events = await storage.read_events(job.id, 0, 100)
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        assert events[-1].seq == progress.job.seq
        assert progress.job.item_count == 3

    async def test_same_idempotency_key_returns_the_first_job(
        self, storage: Storage, clock: FakeClock
    ) -> None:
        """A second create with the same key writes nothing and returns the first job."""
        first = _job()
        first.idempotency_key = "key-1"
        await storage.create_job(first, _creation(first, 2, clock.now()))
        second = _job()
        second.idempotency_key = "key-1"
        stored, created = await storage.create_job(second, _creation(second, 5, clock.now()))
        assert not created and stored.id == first.id
        with pytest.raises(NotFound):
            await storage.get_job(second.id)

    async def test_an_exchange_creates_jobs_and_claims_their_first_work(
        self, storage: Storage, clock: FakeClock
    ) -> None:
        """Creating changes in one exchange each store their job; a repeated key answers
        with the first job; the new jobs' first visits are claimed in the same call."""
        first, second, again = _job(), _job(), _job()
        second.idempotency_key = again.idempotency_key = "key-exchange"
        changes = []
        for job, n in ((first, 1), (second, 2), (again, 4)):
            change = _creation(job, n, clock.now())
            change.create = job
            changes.append(change)
        results, claims = await storage.exchange(changes, "owner", 10, 30.0)
        assert [r.created for r in results if not isinstance(r, Exception)] == [True, True, False]
        made = [r.job for r in results if not isinstance(r, Exception) and r.job is not None]
        assert [job.id for job in made] == [first.id, second.id, second.id]
        assert sorted(c.job.id for c in claims) == sorted([first.id, second.id, second.id])
        counts = (await storage.progress(second.id)).counts["a"]
        assert {status: n for status, n in counts.items() if n} == {I.PROCESSING: 2}
        with pytest.raises(NotFound):
            await storage.get_job(again.id)

    async def test_a_refused_creation_stores_nothing_and_spares_the_others(
        self, storage: Storage, clock: FakeClock
    ) -> None:
        """A creating change whose guard fails leaves no job behind; the next one stands."""
        bad, good = _job(), _job()
        refused = _creation(bad, 1, clock.now())
        refused.create = bad
        refused.visits.append(VisitChange("no-such-visit", expect=I.AVAILABLE, status=I.SKIPPED))
        fine = _creation(good, 1, clock.now())
        fine.create = good
        results, _ = await storage.exchange([refused, fine], "owner", 0, 30.0)
        assert isinstance(results[0], NotFound)
        assert not isinstance(results[1], Exception) and results[1].created
        with pytest.raises(NotFound):
            await storage.get_job(bad.id)
        assert (await storage.progress(good.id)).counts["a"] == {I.AVAILABLE: 1}

    async def test_a_taken_job_id_is_refused_alone(
        self, storage: Storage, clock: FakeClock
    ) -> None:
        """A creation whose job id exists is refused (the database refuses the whole write
        on SQL); the other changes of that exchange still apply and the first job stays."""
        first, other = _job(), _job()
        await storage.create_job(first, _creation(first, 2, clock.now()))
        again = dataclasses.replace(first, item_count=0)
        taken = _creation(again, 1, clock.now())
        taken.create = again
        fine = _creation(other, 1, clock.now())
        fine.create = other
        results, claims = await storage.exchange([fine, taken], "owner", 5, 30.0)
        assert isinstance(results[1], InvalidInput) and "already exists" in str(results[1])
        assert not isinstance(results[0], Exception) and results[0].created
        assert sorted(c.job.id for c in claims) == sorted([first.id] * 2 + [other.id])
        kept = await storage.progress(first.id)
        assert {status: n for status, n in kept.counts["a"].items() if n} == {I.PROCESSING: 2}
        assert kept.job.item_count == 2

    async def test_step_statuses_agree_with_progress(
        self, storage: Storage, clock: FakeClock
    ) -> None:
        """The cheap poll gives the same job status and step statuses as the full read."""
        job = await self._new_job(storage, clock, n=2)
        await storage.claim("owner", 1, 30.0)
        polled, statuses = await storage.step_statuses(job.id)
        progress = await storage.progress(job.id)
        assert polled.status is progress.job.status and polled.seq == progress.job.seq
        assert statuses == dict(progress.step_statuses)

    async def test_action_reads_give_what_an_action_needs(
        self, storage: Storage, clock: FakeClock
    ) -> None:
        """The job, an action id's result, and named items' visits, items and outputs come
        back together; unknown ids are left out, and nothing is read at no step."""
        job = await self._new_job(storage, clock, n=2)
        [claim] = await storage.claim("owner", 1, 30.0)
        await storage.commit(
            _result(
                claim,
                I.PROCESSED,
                {"output": {"seen": True}},
                action_id="done-1",
                action_result={"affected": [claim.item.id]},
            )
        )
        wanted = {claim.item.id, "unknown"}
        reads = await storage.action_reads(job.id, "done-1", "a", wanted)
        assert reads.job.id == job.id and reads.job.seq == (await storage.get_job(job.id)).seq
        assert reads.previous == {"affected": [claim.item.id]}
        assert reads.step == "a" and reads.item_ids == frozenset(wanted)
        assert set(reads.visits) == set(reads.items) == set(reads.outputs) == {claim.item.id}
        assert reads.visits[claim.item.id].status is I.PROCESSED
        assert reads.items[claim.item.id].data == claim.item.data
        assert reads.outputs[claim.item.id] == {"a": {"seen": True}}
        at_b = await storage.action_reads(job.id, None, "b", wanted)  # no visits at b yet
        assert not at_b.visits and not at_b.items and not at_b.outputs
        bare = await storage.action_reads(job.id, "never", None, ())
        assert bare.previous is None and bare.step is None and bare.visits == {}
        with pytest.raises(NotFound):
            await storage.action_reads("no-such-job", None, None, ())

    async def test_a_creation_in_parts_is_one_whole_job(
        self, storage: Storage, clock: FakeClock
    ) -> None:
        """``more`` parts add their items in order; the last part's status holds."""
        job = _job()
        head = _creation(job, 2, clock.now())
        head.job_status = None
        parts = [_creation(job, 3, clock.now()), _creation(job, 4, clock.now())]
        for part in parts:
            part.events.clear()
            part.job_status = None
        parts[-1].job_status = JobStatus.PENDING
        stored, created = await storage.create_job(job, head, more=parts)
        assert created and stored.item_count == 9
        progress = await storage.progress(job.id)
        assert progress.job.status is JobStatus.PENDING
        assert progress.counts["a"] == {I.AVAILABLE: 9}
        page = await storage.list_visits(job.id, "a", None, 0, 100)
        assert [visit.position for _, visit in page] == list(range(1, 10))
        events = await storage.read_events(job.id, 0, 1000)
        assert [e.seq for e in events] == list(range(1, len(events) + 1))

    async def test_a_refused_part_leaves_no_job(self, storage: Storage, clock: FakeClock) -> None:
        """A creation whose later part fails its guard is refused whole: no job, no items."""
        job = _job()
        bad = _creation(job, 1, clock.now())
        bad.visits.append(VisitChange("no-such-visit", expect=I.AVAILABLE, status=I.SKIPPED))
        with pytest.raises(NotFound):
            await storage.create_job(job, _creation(job, 2, clock.now()), more=[bad])
        with pytest.raises(NotFound):
            await storage.get_job(job.id)

    async def test_a_failed_guard_writes_nothing(self, storage: Storage, clock: FakeClock) -> None:
        """A change set with one stale guard is refused whole: no visit, counter or event moves."""
        job = await self._new_job(storage, clock, n=2)
        visits = await storage.find_visits(job.id, "a", {I.AVAILABLE}, 10)
        before = await storage.progress(job.id)
        change = ChangeSet(
            job.id,
            visits=[
                VisitChange(visits[0].id, expect=I.AVAILABLE, status=I.SKIPPED),
                VisitChange(visits[1].id, expect=I.PROCESSED, status=I.PASSED),
            ],
        )
        with pytest.raises(StaleWrite):
            await storage.commit(change)
        after = await storage.progress(job.id)
        assert after.counts == before.counts and after.job.seq == before.job.seq

    async def test_claims_bump_tokens_and_respect_step_concurrency(
        self, storage: Storage, clock: FakeClock
    ) -> None:
        """A claim moves at most `concurrency` visits of a step to processing, new tokens each."""
        job = await self._new_job(storage, clock, n=5, concurrency=2)
        claims = await storage.claim("owner-1", 10, 30.0)
        assert len(claims) == 2
        assert {c.visit.status for c in claims} == {I.PROCESSING}
        assert {c.visit.token for c in claims} == {1}
        assert {c.visit.attempts for c in claims} == {1}
        assert await storage.claim("owner-2", 10, 30.0) == []
        assert (await storage.progress(job.id)).counts["a"][I.PROCESSING] == 2

    async def test_results_that_free_a_full_step_claim_its_waiting_visits(
        self, storage: Storage, clock: FakeClock
    ) -> None:
        """An exchange whose results free slots at a full step claims the visits waiting
        there in the same call, within the step's concurrency."""
        job = await self._new_job(storage, clock, n=5, concurrency=2)
        _, first = await storage.exchange([], "owner", 10, 30.0)
        assert len(first) == 2
        failed = [_result(c, I.FAILED, {"lease_owner": None, "finished_at": 1.0}) for c in first]
        results, second = await storage.exchange(failed, "owner", 10, 30.0)
        assert not [r for r in results if isinstance(r, Exception)]
        assert len(second) == 2
        assert {c.visit.id for c in second}.isdisjoint(c.visit.id for c in first)
        counts = (await storage.progress(job.id)).counts["a"]
        assert (counts[I.PROCESSING], counts[I.AVAILABLE], counts[I.FAILED]) == (2, 1, 2)

    async def test_a_paused_job_is_not_claimed(self, storage: Storage, clock: FakeClock) -> None:
        """Only pending and in-progress jobs give work to claim."""
        job = await self._new_job(storage, clock, n=1)
        await storage.commit(ChangeSet(job.id, job_status=JobStatus.PAUSED))
        assert await storage.claim("owner", 10, 30.0) == []

    async def test_a_lost_lease_refuses_the_late_result(
        self, storage: Storage, clock: FakeClock
    ) -> None:
        """After expiry and rescue, a completion guarded by the old token is LeaseLost."""
        job = await self._new_job(storage, clock, n=1)
        [claim] = await storage.claim("owner-1", 1, 30.0)
        clock.advance(31)
        assert await storage.renew("owner-1", [(claim.visit.id, claim.visit.token)], 30) == set()
        assert await storage.rescue_expired(lambda job, visit: 0.0) == 1
        [again] = await storage.claim("owner-2", 1, 30.0)
        assert again.visit.token == claim.visit.token + 1
        late = _result(claim, I.PROCESSED)
        with pytest.raises(LeaseLost):
            await storage.commit(late)
        events = await storage.read_events(job.id, 0, 100)
        assert any(e.data.get("reason") == "lease expired" for e in events)

    async def test_renew_keeps_a_lease_alive(self, storage: Storage, clock: FakeClock) -> None:
        """A renewed lease is not rescued when its first expiry passes."""
        await self._new_job(storage, clock, n=1)
        [claim] = await storage.claim("owner", 1, 30.0)
        clock.advance(20)
        held = (claim.visit.id, claim.visit.token)
        assert await storage.renew("owner", [held], 30.0) == {held}
        clock.advance(20)
        assert await storage.rescue_expired(lambda job, visit: 0.0) == 0

    async def test_release_hands_work_back(self, storage: Storage, clock: FakeClock) -> None:
        """Released visits are available again at once; another owner's release does nothing."""
        job = await self._new_job(storage, clock, n=1)
        [claim] = await storage.claim("owner", 1, 30.0)
        held = [(claim.visit.id, claim.visit.token)]
        assert await storage.release("someone-else", held) == 0
        assert await storage.release("owner", held) == 1
        assert (await storage.progress(job.id)).counts["a"][I.AVAILABLE] == 1

    async def test_an_action_id_applies_once(self, storage: Storage, clock: FakeClock) -> None:
        """A second commit with the same action id raises DuplicateAction with the result."""
        job = await self._new_job(storage, clock, n=1)
        first = ChangeSet(
            job.id, job_status=JobStatus.PAUSED, action_id="click", action_result={"affected": []}
        )
        await storage.commit(first)
        again = ChangeSet(job.id, job_status=JobStatus.IN_PROGRESS, action_id="click")
        with pytest.raises(DuplicateAction) as caught:
            await storage.commit(again)
        assert caught.value.result == {"affected": []}
        assert (await storage.get_job(job.id)).status is JobStatus.PAUSED
        assert await storage.get_action(job.id, "click") == {"affected": []}

    async def test_retry_times_are_stored_and_due_in_order(
        self, storage: Storage, clock: FakeClock
    ) -> None:
        """A retrying visit is claimable only once its next attempt time has come."""
        await self._new_job(storage, clock, n=1)
        [claim] = await storage.claim("owner", 1, 30.0)
        due = clock.now() + 10
        await storage.commit(
            _result(
                claim,
                I.RETRYING,
                {"next_attempt_at": due, "lease_owner": None, "lease_expires_at": None},
            )
        )
        assert await storage.next_due() == due
        assert await storage.claim("owner", 1, 30.0) == []
        clock.advance(10)
        [again] = await storage.claim("owner", 1, 30.0)
        assert again.visit.attempts == 2

    async def test_pages_of_a_step_follow_item_order(
        self, storage: Storage, clock: FakeClock
    ) -> None:
        """list_visits pages by position after a cursor, with an optional status filter."""
        job = await self._new_job(storage, clock, n=5)
        first = await storage.list_visits(job.id, "a", None, 0, 2)
        rest = await storage.list_visits(job.id, "a", None, first[-1][1].position, 10)
        keys = [item.key for item, _ in first + rest]
        assert keys == ["k0", "k1", "k2", "k3", "k4"]
        assert await storage.list_visits(job.id, "a", {I.FAILED}, 0, 10) == []
