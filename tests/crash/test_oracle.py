"""The crash tests' oracle itself: it passes a clean run and flags each kind of fault."""

from __future__ import annotations

import pytest

from .harness import Database, LedgerEntry, Workers, audit, create_jobs, read_ledger, wait_until

pytestmark = pytest.mark.slow


def _append(workers: Workers, entry: LedgerEntry) -> None:
    with workers.ledger.open("a") as ledger:
        ledger.write(f"{entry.key} {entry.attempt} {entry.pid} {entry.step}\n")


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
def test_the_audit_passes_a_clean_run_and_flags_runs_it_cannot_explain(
    database: Database, workers: Workers
) -> None:
    """A clean run audits clean; an extra run is excused only when its earlier pid was killed."""
    create_jobs(database, "soak", 3)
    process = workers.start()
    wait_until(lambda: database.unfinished_jobs() == 0, "every job final", workers, [process])
    assert workers.stop(process) == 0
    clean = audit(database, workers.ledger)
    assert clean.faults() == {} and clean.runs == clean.item_steps == 18

    first = read_ledger(workers.ledger)[0]
    _append(workers, LedgerEntry(first.key, first.attempt + 1, first.pid, first.step))
    assert audit(database, workers.ledger).duplicated == 1
    excused = audit(database, workers.ledger, killed={first.pid})
    assert excused.duplicated == 0 and excused.reruns_after_crash == 1
    assert excused.last_run_not_committed == 1  # the stored attempt is the earlier one

    workers.ledger.write_text("")
    emptied = audit(database, workers.ledger)
    assert emptied.lost == 18 and emptied.faults()["lost"] == 18
