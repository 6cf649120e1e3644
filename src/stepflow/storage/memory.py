"""The in-memory storage: the test double, and the reference every backend is held to.

Design decision: it keeps plain dicts and applies each change set synchronously between
two ``await`` points, so a commit is atomic within the event loop without a lock. What
a commit *means* comes from :func:`stepflow._commit.plan_commit`, exactly as for SQL
backends; this module only keeps the rows, the counters and two claim indexes (a queue
of available visits per job and step, and a heap of retry times) so that claiming and
snapshots never scan all items. An exchange claims what its own changes made available
first (depth first, as the SQL storage does), then the queues in order.
"""

from __future__ import annotations

import dataclasses
import heapq
from collections import Counter, deque
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any

from .._clock import SystemClock
from .._commit import (
    claim_change,
    initial_step_statuses,
    plan_commit,
    release_change,
    rescue_change,
)
from .._errors import DuplicateAction, InvalidInput, NotFound
from .._records import (
    ChangeSet,
    Claim,
    CommitResult,
    EventRecord,
    ItemRecord,
    JobRecord,
    VisitRecord,
    copy_visit,
)
from .._states import ItemStatus, JobStatus, StepStatus, SubStepStatus
from ..ports import Clock, JobProgress, Storage

__all__ = ["MemoryStorage"]

_ACTIVE = (JobStatus.PENDING, JobStatus.IN_PROGRESS)
_CLAIMABLE = (ItemStatus.AVAILABLE, ItemStatus.RETRYING)


def _joined(change: ChangeSet, more: Iterable[ChangeSet]) -> ChangeSet:
    """``change`` with the parts of ``more`` folded in, in order."""
    parts = list(more)
    if not parts:
        return change
    joined = dataclasses.replace(
        change,
        visits=list(change.visits),
        new_items=list(change.new_items),
        new_visits=list(change.new_visits),
        events=list(change.events),
    )
    for part in parts:
        joined.visits.extend(part.visits)
        joined.new_items.extend(part.new_items)
        joined.new_visits.extend(part.new_visits)
        joined.events.extend(part.events)
        joined.job_status = part.job_status or joined.job_status
    return joined


class MemoryStorage(Storage):
    """Everything in dicts, in this process; lost when the process ends."""

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock: Clock = clock or SystemClock()
        self._jobs: dict[str, JobRecord] = {}
        self._by_key: dict[str, str] = {}
        self._items: dict[str, dict[str, ItemRecord]] = {}
        self._visits: dict[str, VisitRecord] = {}
        self._at_step: dict[tuple[str, str], dict[str, str]] = {}
        self._of_item: dict[str, list[str]] = {}
        self._item_outputs: dict[str, dict[str, Any]] = {}  #: by item, then step
        self._counts: dict[str, dict[str, Counter[ItemStatus]]] = {}
        self._sub_counts: dict[str, dict[str, dict[str, Counter[SubStepStatus]]]] = {}
        self._statuses: dict[str, dict[str, StepStatus]] = {}
        self._started: dict[str, frozenset[str]] = {}
        self._events: dict[str, list[EventRecord]] = {}
        self._actions: dict[tuple[str, str], dict[str, Any] | None] = {}
        self._ready: dict[tuple[str, str], deque[str]] = {}
        self._retry_heap: list[tuple[float, str]] = []
        self._processing: set[str] = set()
        #: During an exchange: visits its changes made available, claimed first.
        self._fresh: list[str] | None = None

    # -- writes -------------------------------------------------------------------

    async def create_job(
        self, job: JobRecord, change: ChangeSet, more: Iterable[ChangeSet] = ()
    ) -> tuple[JobRecord, bool]:
        change = _joined(change, more)  # everything is in memory anyway: one change
        if job.idempotency_key is not None and job.idempotency_key in self._by_key:
            return self._jobs[self._by_key[job.idempotency_key]], False
        if job.id in self._jobs:
            raise InvalidInput(f"job id {job.id!r} already exists")
        self._jobs[job.id] = job
        self._items[job.id] = {}
        self._counts[job.id] = {info.key: Counter() for info in job.steps}
        self._sub_counts[job.id] = {info.key: {} for info in job.steps}
        self._statuses[job.id] = initial_step_statuses(job)
        self._started[job.id] = frozenset()
        self._events[job.id] = []
        try:
            self._apply(change)
        except BaseException:
            for table in (self._jobs, self._items, self._counts, self._sub_counts):
                table.pop(job.id, None)
            for other in (self._statuses, self._started, self._events):
                other.pop(job.id, None)
            raise
        if job.idempotency_key is not None:
            self._by_key[job.idempotency_key] = job.id
        return job, True

    async def commit(self, change: ChangeSet) -> CommitResult:
        return self._apply(change)

    def _apply(self, change: ChangeSet) -> CommitResult:
        job = self._job(change.job_id)
        if change.action_id is not None and (job.id, change.action_id) in self._actions:
            raise DuplicateAction(change.action_id, self._actions[(job.id, change.action_id)])
        before = {
            vc.visit_id: self._visits[vc.visit_id]
            for vc in change.visits
            if vc.visit_id in self._visits
        }
        now = self.clock.now()
        plan = plan_commit(
            job,
            before,
            change,
            self._counts[job.id],
            self._statuses[job.id],
            self._started[job.id],
            now,
        )
        # Nothing below raises: the change is applied whole.
        for item in change.new_items:
            self._items[job.id][item.id] = item
        for visit in plan.visits.values():
            self._store_visit(visit)
        counts = self._counts[job.id]
        for (step, status), delta in plan.count_deltas.items():
            counts[step][status] += delta
        sub_counts = self._sub_counts[job.id]
        for (step, key, sub_status), delta in plan.substep_deltas.items():
            sub_counts[step].setdefault(key, Counter())[sub_status] += delta
        self._statuses[job.id].update(plan.step_statuses)
        self._started[job.id] = plan.started
        job.status = plan.job_status
        for name, value in plan.job_fields.items():
            setattr(job, name, value)
        job.updated_at = now
        log = self._events[job.id]
        for draft in plan.events:
            job.seq += 1
            log.append(
                EventRecord(
                    job.id,
                    job.seq,
                    draft.type,
                    now,
                    change.actor,
                    draft.step,
                    draft.item_id,
                    draft.data,
                )
            )
        if change.action_id is not None:
            self._actions[(job.id, change.action_id)] = change.action_result
        return CommitResult(job.id, job.seq, job.status, dict(self._statuses[job.id]))

    def _store_visit(self, visit: VisitRecord) -> None:
        old = self._visits.get(visit.id)
        self._visits[visit.id] = visit
        if visit.output is not None:
            self._item_outputs.setdefault(visit.item_id, {})[visit.step] = visit.output
        elif old is not None and old.output is not None:
            self._item_outputs[visit.item_id].pop(visit.step, None)
        if old is None:
            self._at_step.setdefault((visit.job_id, visit.step), {})[visit.item_id] = visit.id
            self._of_item.setdefault(visit.item_id, []).append(visit.id)
        changed = old is None or old.status is not visit.status
        if visit.status is ItemStatus.PROCESSING:
            self._processing.add(visit.id)
        else:
            self._processing.discard(visit.id)
        if changed and visit.status is ItemStatus.AVAILABLE:
            self._ready.setdefault((visit.job_id, visit.step), deque()).append(visit.id)
            if self._fresh is not None:
                self._fresh.append(visit.id)
        elif (
            visit.status is ItemStatus.RETRYING
            and visit.next_attempt_at is not None
            and (old is None or old.next_attempt_at != visit.next_attempt_at or changed)
        ):
            heapq.heappush(self._retry_heap, (visit.next_attempt_at, visit.id))

    # -- claiming and leases ----------------------------------------------------------

    async def exchange(
        self, changes: Sequence[ChangeSet], owner: str, limit: int, lease_seconds: float
    ) -> tuple[list[CommitResult | Exception], list[Claim]]:
        """As every storage: commit each change, then claim; work the changes made
        available (items moving on) is claimed before work that was already waiting."""
        self._fresh = []
        try:
            return await super().exchange(changes, owner, limit, lease_seconds)
        finally:
            self._fresh = None

    async def claim(self, owner: str, limit: int, lease_seconds: float) -> list[Claim]:
        fresh, self._fresh = self._fresh or [], None
        now = self.clock.now()
        while self._retry_heap and self._retry_heap[0][0] <= now:
            due, visit_id = heapq.heappop(self._retry_heap)
            visit = self._visits[visit_id]
            if visit.status is ItemStatus.RETRYING and visit.next_attempt_at == due:
                self._ready.setdefault((visit.job_id, visit.step), deque()).appendleft(visit_id)
        picked: dict[str, list[VisitRecord]] = {}
        taking: Counter[tuple[str, str]] = Counter()
        # A visit claimed from ``fresh`` stays in its queue, and a claimed visit may come
        # back there (rescued, retrying) before that entry is popped: take each once.
        chosen: set[str] = set()

        def take(visit: VisitRecord) -> None:
            chosen.add(visit.id)
            taking[(visit.job_id, visit.step)] += 1
            picked.setdefault(visit.job_id, []).append(visit)

        # The visits this exchange made available first, then the queues in order.
        for visit_id in fresh:
            if len(chosen) >= limit:
                break
            visit = self._visits[visit_id]
            key = (visit.job_id, visit.step)
            if visit.status is ItemStatus.AVAILABLE and self._room(*key) > taking[key]:
                take(visit)
        for key in list(self._ready):
            if len(chosen) >= limit:
                break
            queue = self._ready[key]
            room = self._room(*key) - taking[key]
            while queue and room > 0 and len(chosen) < limit:
                visit = self._visits[queue.popleft()]
                if visit.id in chosen or visit.status not in _CLAIMABLE:
                    continue
                if visit.status is ItemStatus.RETRYING and (visit.next_attempt_at or 0) > now:
                    continue
                take(visit)
                room -= 1
            if not queue:
                del self._ready[key]
        claims: list[Claim] = []
        expires = now + lease_seconds
        for job_id, visits in picked.items():
            change = ChangeSet(
                job_id, actor=owner, visits=[claim_change(v, owner, expires, now) for v in visits]
            )
            self._apply(change)
            job = self._jobs[job_id]
            items = self._items[job_id]
            for visit in visits:
                claimed = self._visits[visit.id]
                outputs = self._outputs(claimed.item_id)
                claims.append(Claim(job, items[claimed.item_id], claimed, outputs))
        return claims

    def _room(self, job_id: str, step: str) -> int:
        """How many more visits may be claimed at ``step`` of ``job_id`` now: none unless
        the job is active and the step runs work and is started."""
        job = self._jobs[job_id]
        if job.status not in _ACTIVE:
            return 0
        info = job.steps[job.step_index(step)]
        if not info.runs_work or not (job.auto_process or step in self._started[job_id]):
            return 0
        return info.concurrency - self._counts[job_id][step][ItemStatus.PROCESSING]

    async def renew(
        self, owner: str, held: Sequence[tuple[str, int]], lease_seconds: float
    ) -> set[tuple[str, int]]:
        now = self.clock.now()
        expires = now + lease_seconds
        kept: set[tuple[str, int]] = set()
        for visit_id, token in held:
            visit = self._visits.get(visit_id)
            if (
                visit is not None
                and visit.status is ItemStatus.PROCESSING
                and visit.token == token
                and visit.lease_owner == owner
                and (visit.lease_expires_at or 0) >= now
            ):
                self._visits[visit_id] = copy_visit(visit, {"lease_expires_at": expires})
                kept.add((visit_id, token))
        return kept

    async def release(self, owner: str, held: Sequence[tuple[str, int]]) -> int:
        released = 0
        for visit_id, token in held:
            visit = self._visits.get(visit_id)
            if visit is None or visit.token != token or visit.lease_owner != owner:
                continue
            if visit.status is not ItemStatus.PROCESSING:
                continue
            self._apply(ChangeSet(visit.job_id, actor=owner, visits=[release_change(visit)]))
            released += 1
        return released

    async def rescue_expired(
        self, retry_delay: Callable[[JobRecord, VisitRecord], float | None]
    ) -> int:
        now = self.clock.now()
        expired = [
            self._visits[v]
            for v in self._processing
            if (self._visits[v].lease_expires_at or 0) < now
        ]
        for visit in expired:
            delay = retry_delay(self._jobs[visit.job_id], visit)
            change = ChangeSet(visit.job_id, actor="rescuer")
            change.visits.append(rescue_change(visit, delay, now))
            self._apply(change)
        return len(expired)

    async def next_due(self) -> float | None:
        while self._retry_heap:
            due, visit_id = self._retry_heap[0]
            visit = self._visits[visit_id]
            if visit.status is ItemStatus.RETRYING and visit.next_attempt_at == due:
                return due
            heapq.heappop(self._retry_heap)
        return None

    async def now(self) -> float:
        return self.clock.now()

    # -- reads ----------------------------------------------------------------------

    def _job(self, job_id: str) -> JobRecord:
        try:
            return self._jobs[job_id]
        except KeyError:
            raise NotFound("job", job_id) from None

    async def get_job(self, job_id: str) -> JobRecord:
        return self._job(job_id)

    async def progress(self, job_id: str) -> JobProgress:
        job = self._job(job_id)
        counts = {step: dict(c) for step, c in self._counts[job_id].items()}
        subs = {
            step: {key: dict(c) for key, c in per_sub.items()}
            for step, per_sub in self._sub_counts[job_id].items()
        }
        return JobProgress(
            dataclasses.replace(job),
            counts,
            subs,
            dict(self._statuses[job_id]),
            self._started[job_id],
        )

    async def get_action(self, job_id: str, action_id: str) -> dict[str, Any] | None:
        if (job_id, action_id) not in self._actions:
            return None
        return self._actions[(job_id, action_id)] or {}

    async def get_items(self, job_id: str, item_ids: Collection[str]) -> dict[str, ItemRecord]:
        items = self._items.get(job_id, {})
        return {i: items[i] for i in item_ids if i in items}

    async def get_visits(
        self, job_id: str, step: str, item_ids: Collection[str]
    ) -> dict[str, VisitRecord]:
        at_step = self._at_step.get((job_id, step), {})
        return {i: self._visits[at_step[i]] for i in item_ids if i in at_step}

    async def find_visits(
        self, job_id: str, step: str, statuses: Collection[ItemStatus], limit: int
    ) -> list[VisitRecord]:
        found: list[VisitRecord] = []
        for visit_id in self._at_step.get((job_id, step), {}).values():
            visit = self._visits[visit_id]
            if visit.status in statuses:
                found.append(visit)
                if len(found) >= limit:
                    break
        return found

    async def list_visits(
        self,
        job_id: str,
        step: str,
        statuses: Collection[ItemStatus] | None,
        after: int,
        limit: int,
    ) -> list[tuple[ItemRecord, VisitRecord]]:
        items = self._items.get(job_id, {})
        rows = [self._visits[v] for v in self._at_step.get((job_id, step), {}).values()]
        rows = [
            v for v in rows if v.position > after and (statuses is None or v.status in statuses)
        ]
        rows.sort(key=lambda v: v.position)
        return [(items[v.item_id], v) for v in rows[:limit]]

    def _outputs(self, item_id: str) -> dict[str, Any]:
        return dict(self._item_outputs.get(item_id, ()))

    async def item_outputs(
        self, job_id: str, item_ids: Collection[str]
    ) -> dict[str, dict[str, Any]]:
        return {item_id: self._outputs(item_id) for item_id in item_ids}

    async def read_events(self, job_id: str, after: int, limit: int) -> list[EventRecord]:
        log = self._events.get(job_id)
        if log is None:
            raise NotFound("job", job_id)
        start = max(after, 0)  # seq n is at index n - 1
        return log[start : start + limit]
