"""Group commit: folding many change sets and claims into one transaction, without I/O.

Design decision: the database's commit rate is the ceiling of a storage that commits
each result on its own, so a storage may apply several change sets — and claim the
work they make due — in one transaction. It loads the rows they touch once, then plans
each change in order against the state the earlier ones left, in memory, with the same
:func:`stepflow._commit.plan_commit` every storage uses. A change whose guard fails is
refused alone and leaves the state exactly as it found it; the others go on. What
remains is one set of final rows (items, visits, counters, events, job rows, action ids)
that the storage writes with a few bulk statements, so a batch of fifty results costs
about what one did. Nothing is acknowledged before that transaction is durable: the
results are handed back only after the storage commits. A change may create its job
(``ChangeSet.create``): the job starts empty in the batch, its row is inserted whole,
and its first visits can be claimed in the same transaction. Claims go depth first:
what the batch's own changes made available is claimed before visits that were waiting,
so a moving item's next visit is written once, already claimed.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ._commit import claim_change, initial_step_statuses, plan_commit
from ._errors import DuplicateAction, InvalidInput, NotFound, StepflowError
from ._records import (
    ChangeSet,
    CommitResult,
    ItemRecord,
    JobRecord,
    StepInfo,
    VisitRecord,
    copy_job,
)
from ._states import ItemStatus, JobStatus, StepStatus, SubStepStatus

__all__ = ["BatchJob", "CommitBatch"]

_ACTIVE = (JobStatus.PENDING, JobStatus.IN_PROGRESS)


@dataclass(slots=True)
class BatchJob:
    """One job's state inside a batch: its row, counters, step statuses, started steps."""

    job: JobRecord
    counts: dict[str, Counter[ItemStatus]]
    statuses: dict[str, StepStatus]
    started: frozenset[str]
    started_before: frozenset[str] = frozenset()
    changed: bool = False
    new: bool = False  #: created by this batch: its row is inserted, not updated
    infos: dict[str, StepInfo] = field(default_factory=dict)
    #: Steps whose counter this batch may change in place; any other is shared with a
    #: kept state and copied on its first change (most steps of a job never change).
    owned: set[str] = field(default_factory=set)

    def ready(self, step: str) -> bool:
        """Whether visits at ``step`` may be claimed (the step runs work and is started)."""
        info = self.infos[step]
        return info.runs_work and (self.job.auto_process or step in self.started)


class CommitBatch:
    """The state one transaction reads, changes in memory, and writes back once."""

    def __init__(self, now: float) -> None:
        self.now = now
        self.jobs: dict[str, BatchJob] = {}
        self.visits: dict[str, VisitRecord] = {}  #: current state of every known visit
        self.stored: set[str] = set()  #: visit ids that exist in the database
        self.touched: dict[str, None] = {}  #: visit ids changed or created, in order
        self.new_items: list[ItemRecord] = []
        self.count_deltas: Counter[tuple[str, str, ItemStatus]] = Counter()
        self.substep_deltas: Counter[tuple[str, str, str, SubStepStatus]] = Counter()
        self.events: list[dict[str, Any]] = []
        self.actions: list[dict[str, Any]] = []
        self._applied: dict[tuple[str, str], dict[str, Any] | None] = {}
        self._keyed: dict[str, JobRecord] = {}  #: jobs by idempotency key, stored or new

    # -- loading ----------------------------------------------------------------------

    def add_job(
        self,
        job: JobRecord,
        counts: dict[str, Counter[ItemStatus]],
        statuses: dict[str, StepStatus],
        started: frozenset[str],
        *,
        shared: bool = False,
    ) -> None:
        """A stored job's state. ``shared``: the counters in ``counts`` belong to a kept
        state too, so they are copied before this batch changes them."""
        self.jobs[job.id] = BatchJob(
            job,
            counts,
            statuses,
            started,
            started_before=started,
            infos={info.key: info for info in job.steps},
            owned=set() if shared else set(counts),
        )

    def add_visit(self, visit: VisitRecord) -> None:
        """A stored visit as read; a version changed earlier in this batch wins."""
        if visit.id not in self.visits:
            self.visits[visit.id] = visit
            self.stored.add(visit.id)

    def add_action(self, job_id: str, action_id: str, result: dict[str, Any] | None) -> None:
        """An action id already applied (stored), with its result."""
        self._applied[(job_id, action_id)] = result

    def add_keyed_job(self, job: JobRecord) -> None:
        """A stored job that holds an idempotency key a creating change may ask for."""
        assert job.idempotency_key is not None
        self._keyed[job.idempotency_key] = job

    # -- planning ---------------------------------------------------------------------

    def apply(self, change: ChangeSet, actor: str | None = None) -> CommitResult:
        """Plan ``change`` against the current state and fold it in.

        Raises what :func:`plan_commit` raises (and ``NotFound``/``DuplicateAction``),
        in which case the state is exactly as before.
        """
        state = self.jobs.get(change.job_id)
        if state is None:
            raise NotFound("job", change.job_id)
        if change.action_id is not None and (change.job_id, change.action_id) in self._applied:
            raise DuplicateAction(
                change.action_id, self._applied[(change.job_id, change.action_id)]
            )
        job = state.job
        plan = plan_commit(
            job, self.visits, change, state.counts, state.statuses, state.started, self.now
        )
        for visit_id, visit in plan.visits.items():
            self.visits[visit_id] = visit
            self.touched[visit_id] = None
        counts = state.counts
        for (step, status), delta in plan.count_deltas.items():
            if delta:
                if step not in state.owned:
                    mine: Counter[ItemStatus] = Counter()
                    dict.update(mine, counts.get(step, {}))
                    counts[step] = mine
                    state.owned.add(step)
                counts[step][status] += delta
                self.count_deltas[(job.id, step, status)] += delta
        for (step, key, sub_status), delta in plan.substep_deltas.items():
            if delta:
                self.substep_deltas[(job.id, step, key, sub_status)] += delta
        state.statuses.update(plan.step_statuses)
        state.started = plan.started
        self.new_items.extend(change.new_items)
        seq = job.seq
        for draft in plan.events:
            seq += 1
            self.events.append(
                {
                    "job_id": job.id,
                    "seq": seq,
                    "type": draft.type,
                    "at": self.now,
                    "actor": actor or change.actor,
                    "step": draft.step,
                    "item_id": draft.item_id,
                    "data": draft.data,
                }
            )
        job.seq = seq
        job.status = plan.job_status
        job.updated_at = self.now
        for name, value in plan.job_fields.items():
            setattr(job, name, value)
        if change.action_id is not None:
            self._applied[(job.id, change.action_id)] = change.action_result
            self.actions.append(
                {
                    "job_id": job.id,
                    "action_id": change.action_id,
                    "result": change.action_result,
                    "at": self.now,
                }
            )
        state.changed = True
        return CommitResult(job.id, seq, plan.job_status, dict(state.statuses))

    def create(self, change: ChangeSet) -> CommitResult:
        """Create ``change.create`` and apply ``change`` to it (its items, first visits).

        A job already holding the idempotency key — stored, or created earlier in this
        batch — is the answer instead, and nothing is written (``created=False``).
        Refused whole, like :meth:`apply`.
        """
        assert change.create is not None
        key = change.create.idempotency_key
        if key is not None and key in self._keyed:
            job = self._keyed[key]
            found = self.jobs.get(job.id)
            copy = copy_job(found.job if found else job)
            statuses = dict(found.statuses) if found else {}
            return CommitResult(copy.id, copy.seq, copy.status, statuses, job=copy)
        if change.create.id in self.jobs:
            raise InvalidInput(f"job id {change.create.id!r} already exists")
        job = copy_job(change.create)
        self.jobs[job.id] = BatchJob(
            job,
            {},
            initial_step_statuses(job),
            frozenset(),
            new=True,
            infos={info.key: info for info in job.steps},
        )
        try:
            result = self.apply(change)
        except BaseException:
            del self.jobs[job.id]
            raise
        if key is not None:
            self._keyed[key] = job
        return dataclasses.replace(result, job=self.job_copy(job.id), created=True)

    def apply_each(self, changes: Iterable[ChangeSet]) -> list[CommitResult | StepflowError]:
        """Apply (or create) each change on its own: a refused one is returned, not
        raised."""
        results: list[CommitResult | StepflowError] = []
        for change in changes:
            try:
                results.append(self.apply(change) if change.create is None else self.create(change))
            except StepflowError as exc:
                results.append(exc)
        return results

    def claim(
        self, candidates: Iterable[str], owner: str, limit: int, expires: float
    ) -> list[VisitRecord]:
        """Claim up to ``limit`` due visits: the due retries among ``candidates`` (stored
        ids, in order), then the visits this batch made available, then the rest of
        ``candidates``. Checks job status, readiness and each step's concurrency against
        the state as this batch left it.

        Work already under way goes first (depth first): an item that just finished a
        step is claimed at the next one before a waiting item starts, so jobs finish
        sooner, and its new visit is written once, already claimed, instead of being
        inserted now and updated by the next transaction.
        """
        if limit <= 0:
            return []
        known = self.visits
        stored = list(candidates)
        pool = [v for v in stored if known[v].status is ItemStatus.RETRYING]
        pool.extend(v for v in self.touched if known[v].status is ItemStatus.AVAILABLE)
        pool.extend(v for v in stored if known[v].status is not ItemStatus.RETRYING)
        picked: dict[str, list[VisitRecord]] = {}
        taking: Counter[tuple[str, str]] = Counter()
        seen: set[str] = set()
        taken = 0
        for visit_id in pool:
            if taken >= limit:
                break
            if visit_id in seen:
                continue
            seen.add(visit_id)
            visit = self.visits[visit_id]
            state = self.jobs.get(visit.job_id)
            if state is None or state.job.status not in _ACTIVE:
                continue
            due = visit.status is ItemStatus.AVAILABLE or (
                visit.status is ItemStatus.RETRYING
                and visit.next_attempt_at is not None
                and visit.next_attempt_at <= self.now
            )
            if not due or not state.ready(visit.step):
                continue
            key = (visit.job_id, visit.step)
            processing = state.counts.get(visit.step, Counter())[ItemStatus.PROCESSING]
            if processing + taking[key] >= state.infos[visit.step].concurrency:
                continue
            taking[key] += 1
            picked.setdefault(visit.job_id, []).append(visit)
            taken += 1
        claimed: list[VisitRecord] = []
        for job_id, visits in picked.items():
            change = ChangeSet(
                job_id,
                actor=owner,
                visits=[claim_change(v, owner, expires, self.now) for v in visits],
            )
            self.apply(change)  # every guard was checked above
            claimed.extend(self.visits[v.id] for v in visits)
        return claimed

    def queued_behind(self) -> dict[tuple[str, str], int]:
        """Per ``(job, step)`` where this batch freed processing slots and visits still
        wait ``available``: how many of them may be claimed there now.

        A storage that drops full steps from its candidate read (read before the batch's
        results are applied) asks for these separately, so results that free a step
        hand its slots on in the same transaction.
        """
        behind: dict[tuple[str, str], int] = {}
        for (job_id, step, status), delta in self.count_deltas.items():
            if status is not ItemStatus.PROCESSING or delta >= 0:
                continue
            state = self.jobs.get(job_id)
            if state is None or state.job.status not in _ACTIVE or not state.ready(step):
                continue
            counts = state.counts.get(step, Counter())
            room = state.infos[step].concurrency - counts[ItemStatus.PROCESSING]
            waiting = counts[ItemStatus.AVAILABLE]
            if room > 0 and waiting > 0:
                behind[(job_id, step)] = min(room, waiting)
        return behind

    def written(self) -> None:
        """What the batch holds is written: forget it, keep the jobs' state, so a next
        part (of a creation too large to hold at once) can be applied and written."""
        for state in self.jobs.values():
            state.new = state.changed = False  # the rows exist and are up to date
            state.started_before = state.started
        self.visits.clear()
        self.stored.clear()
        self.touched.clear()
        self.new_items.clear()
        self.count_deltas.clear()
        self.substep_deltas.clear()
        self.events.clear()
        self.actions.clear()

    # -- what to write ----------------------------------------------------------------

    def visit_rows(self) -> tuple[list[VisitRecord], list[VisitRecord]]:
        """The final state of (created, changed) visits."""
        created: list[VisitRecord] = []
        changed: list[VisitRecord] = []
        for visit_id in self.touched:
            visit = self.visits[visit_id]
            (changed if visit_id in self.stored else created).append(visit)
        return created, changed

    def newly_started(self) -> dict[str, frozenset[str]]:
        """Per job, the steps started by hand in this batch (their stored visits get ready)."""
        return {
            job_id: state.started - state.started_before
            for job_id, state in self.jobs.items()
            if state.started != state.started_before and not state.job.auto_process
        }

    def changed_jobs(self) -> list[BatchJob]:
        """Stored jobs whose row must be updated, in id order."""
        return [
            self.jobs[k] for k in sorted(self.jobs) if self.jobs[k].changed and not self.jobs[k].new
        ]

    def new_jobs(self) -> list[BatchJob]:
        """Jobs this batch created (their rows are inserted whole), in creation order."""
        return [state for state in self.jobs.values() if state.new]

    def job_copy(self, job_id: str) -> JobRecord:
        """A detached copy of the job's current row (for claims handed to workers)."""
        return copy_job(self.jobs[job_id].job)
