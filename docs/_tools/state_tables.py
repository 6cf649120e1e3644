"""Print the Markdown tables and mermaid diagrams of docs/states.md from stepflow._states.

Run:  .venv/bin/python docs/_tools/state_tables.py
"""

from stepflow._snapshot import phase_status
from stepflow._states import (
    ITEM_TRANSITIONS,
    JOB_REOPEN,
    JOB_TRANSITIONS,
    STEP_TRANSITIONS,
    SUBSTEP_TRANSITIONS,
    ItemStatus,
    JobStatus,
    StepStatus,
    SubStepStatus,
    derive_job_status,
    derive_step_status,
)

I, J, U = ItemStatus, JobStatus, SubStepStatus


def table(title, enum, transitions, note=lambda a, b: ""):
    print(f"#### {title}\n")
    print("| from | may change to |")
    print("|---|---|")
    for status in enum:
        targets = [f"`{t}`{note(status, t)}" for t in enum if t in transitions[status]]
        print(f"| `{status}` | {', '.join(targets) or '— (final)'} |")
    print()


def mermaid(enum, transitions, start, final, note=lambda a, b: ""):
    print("```mermaid\nstateDiagram-v2")
    print(f"    [*] --> {start}")
    for status in enum:
        for target in enum:
            if target in transitions[status]:
                label = note(status, target)
                print(f"    {status} --> {target}{' : ' + label if label else ''}")
    for status in final:
        print(f"    {status} --> [*]")
    print("```\n")


reopen = lambda a, b: " (by retry, pass or skip only)" if (a, b) in JOB_REOPEN else ""  # noqa: E731
table("Job", JobStatus, JOB_TRANSITIONS, reopen)
table("Step (derived)", StepStatus, STEP_TRANSITIONS)
table("Item at a step", ItemStatus, ITEM_TRANSITIONS)
table("Sub-step", SubStepStatus, SUBSTEP_TRANSITIONS)

print("### Diagrams\n")
mermaid(
    JobStatus,
    JOB_TRANSITIONS,
    "draft",
    [J.CANCELLED],
    lambda a, b: "retry, pass or skip" if (a, b) in JOB_REOPEN else "",
)
mermaid(ItemStatus, ITEM_TRANSITIONS, "available", [I.PASSED, I.SKIPPED, I.CANCELLED])
mermaid(SubStepStatus, SUBSTEP_TRANSITIONS, "pending", [])

print("### derive_step_status examples\n")
print("| items at the step | started | upstream open | step status |")
print("|---|---|---|---|")
cases = [
    ({}, False, True),
    ({}, False, False),
    ({I.PROCESSING: 1, I.FAILED: 2}, True, False),
    ({I.AVAILABLE: 3}, True, False),
    ({I.AVAILABLE: 3}, False, False),
    ({I.RETRYING: 1, I.PASSED: 4}, True, False),
    ({I.AWAITING_INPUT: 2, I.PASSED: 1}, True, False),
    ({I.PROCESSED: 2}, True, False),
    ({I.PASSED: 1, I.FAILED: 5}, True, False),
    ({I.SKIPPED: 2}, True, False),
    ({I.FAILED: 2, I.CANCELLED: 1}, True, False),
    ({I.CANCELLED: 3}, True, False),
]
for counts, started, upstream in cases:
    shown = ", ".join(f"{n} {s}" for s, n in counts.items()) or "none"
    status = derive_step_status(counts, started=started, upstream_open=upstream)
    print(f"| {shown} | {started} | {upstream} | `{status}` |")
print()

print("### derive_job_status examples\n")
print("| current | items per step (in order) | job status |")
print("|---|---|---|")
jcases = [
    (J.PAUSED, [{I.AVAILABLE: 2}, {}]),
    (J.PENDING, [{I.AVAILABLE: 2}, {}]),
    (J.PENDING, [{I.PROCESSING: 1, I.AVAILABLE: 1}, {}]),
    (J.IN_PROGRESS, [{I.PASSED: 2}, {I.AWAITING_INPUT: 2}]),
    (J.IN_PROGRESS, [{I.PASSED: 2}, {I.PASSED: 1, I.FAILED: 1}]),
    (J.IN_PROGRESS, [{I.PASSED: 1, I.FAILED: 1}, {I.SKIPPED: 1}]),
    (J.IN_PROGRESS, [{I.FAILED: 2}, {}]),
    (J.IN_PROGRESS, [{I.PASSED: 2}, {I.CANCELLED: 2}]),
]
for current, steps in jcases:
    shown = " / ".join(", ".join(f"{n} {s}" for s, n in c.items()) or "none" for c in steps)
    print(f"| `{current}` | {shown} | `{derive_job_status(current, steps)}` |")
print()

print("### phase_status examples\n")
print("| sub-step counts in the phase | phase status |")
print("|---|---|")
pcases = [
    {U.PENDING: 4},
    {U.IN_PROGRESS: 1, U.PENDING: 3},
    {U.RETRYING: 1, U.FAILED: 1},
    {U.COMPLETED: 3, U.SKIPPED: 1},
    {U.COMPLETED: 3, U.FAILED: 1},
    {U.COMPLETED: 2, U.PENDING: 2},
]
for counts in pcases:
    shown = ", ".join(f"{n} {s}" for s, n in counts.items())
    print(f"| {shown} | `{phase_status(counts, sum(counts.values()))}` |")
