"""A stand-in for the person at the registration's person steps.

Design decision: the operator works like a UI does — it reads the snapshot's available
actions, lists the items waiting at a step, and answers them with the same
``submit``/``retry_items`` calls a screen would make. What to answer comes from a
:class:`Decisions` object, so the demo's simulated operator and an interactive prompt
share one loop, and nothing here knows the pipeline's order beyond which screen goes
with which step key.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import anyio

from stepflow import Conflict, Item, JobStatus, Orchestrator, Snapshot, StepStatus

__all__ = [
    "Decisions",
    "SimulatedDecisions",
    "SimulatedOperator",
    "all_items",
    "default_configuration",
]

_FINAL = (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)
_BUSY = (StepStatus.IN_PROGRESS, StepStatus.RETRYING)


async def all_items(
    orch: Orchestrator, job_id: str, step: str, status: str | None = None
) -> list[Item]:
    """Every item at ``step`` (optionally in one status), across pages."""
    found: list[Item] = []
    cursor: int | None = None
    while True:
        page = await orch.list_items(job_id, step, status=status, cursor=cursor, limit=1000)
        found.extend(page.items)
        if page.next_cursor is None:
            return found
        cursor = page.next_cursor


def default_configuration() -> dict[str, Any]:
    """The settings an operator applies to every restaurant ("apply to all")."""
    return {
        "account": {"registerNewUser": True, "password": "change-me-on-first-login"},
        "menu": {"uploadImages": True, "addOptionSets": True, "addItemTags": True},
        "website": {"theme": "dark", "itemLayout": "card", "configureHeader": True},
        "payment": {"includeStripeLink": True},
        "onboarding": {"createOnboardingUser": True, "syncOnboardingRecord": True},
    }


class Decisions(Protocol):
    """What a person answers at each person step; ``None`` leaves the item waiting."""

    async def search_again(self, item: Item) -> dict[str, Any] | None: ...
    async def choose_company(
        self, item: Item, candidates: list[dict[str, Any]]
    ) -> dict[str, Any] | None: ...
    async def configure(
        self, items: list[Item], menus: Mapping[str, str | None]
    ) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]: ...
    async def retry(self, step: str, items: list[Item]) -> list[str]: ...


class SimulatedDecisions:
    """Seeded answers: edit search terms or enter by hand, pick a company (or "no
    match"), one configuration for all with a few per-restaurant overrides."""

    def __init__(
        self,
        seed: int = 0,
        *,
        no_match_rate: float = 0.1,
        manual_entry_rate: float = 0.3,
        override_rate: float = 0.2,
    ) -> None:
        self.seed = seed
        self.no_match_rate = no_match_rate
        self.manual_entry_rate = manual_entry_rate
        self.override_rate = override_rate

    def _rng(self, purpose: str, key: str) -> random.Random:
        return random.Random(f"{self.seed}:{purpose}:{key}")

    async def search_again(self, item: Item) -> dict[str, Any] | None:
        data = item.data
        if self._rng("manual", item.key).random() < self.manual_entry_rate:
            return {
                "manual": {
                    "company_name": f"{data['name']} Trading Limited",
                    "contact_email": f"hello@{item.key}.example",
                }
            }
        terms = {"name": f"{data['name']} Ltd", "street": "", "city": data.get("city", "")}
        return {"search": terms}

    async def choose_company(
        self, item: Item, candidates: list[dict[str, Any]]
    ) -> dict[str, Any] | None:
        if not candidates or self._rng("no_match", item.key).random() < self.no_match_rate:
            return {"no_match": True}
        return {"company_number": candidates[0]["company_number"]}

    async def configure(
        self, items: list[Item], menus: Mapping[str, str | None]
    ) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        payloads: dict[str, dict[str, Any]] = {}
        for item in items:
            payload: dict[str, Any] = {
                "restaurant": {"name": item.data.get("name"), "subdomain": item.key},
                "menu": {"selectedMenuId": menus.get(item.id)},
            }
            rng = self._rng("override", item.key)
            if rng.random() < self.override_rate:
                payload.update(
                    rng.choice(
                        (
                            {"onboarding": {"createOnboardingUser": False}},
                            {"steps_enabled": {"itemTags": False}},
                            {"menu": {"selectedMenuId": menus.get(item.id), "uploadImages": False}},
                        )
                    )
                )
            payloads[item.id] = payload
        return default_configuration(), payloads

    async def retry(self, step: str, items: list[Item]) -> list[str]:
        return [item.id for item in items]


class SimulatedOperator:
    """Answers every person step of one job through ``decisions`` until it settles.

    Failed items are retried once each (per step); ``on_action`` hears a one-line
    description of every action taken. ``eager`` answers as soon as an item waits.
    """

    def __init__(
        self,
        orch: Orchestrator,
        job_id: str,
        decisions: Decisions,
        *,
        retry_failed: bool = True,
        eager: bool = True,
        on_action: Callable[[str], None] | None = None,
    ) -> None:
        self.orch = orch
        self.job_id = job_id
        self.decisions = decisions
        self.retry_failed = retry_failed
        self.eager = eager
        self.on_action = on_action or (lambda message: None)
        self.retried: set[tuple[str, str]] = set()
        self.actions = 0

    async def run(self, *, timeout: float | None = None) -> Snapshot:
        """Act until the job is final, or nothing runs and nothing is left to answer.

        An eager operator answers as soon as something waits for it (a person watching
        the screen); otherwise it answers only when nothing runs (a batch screen).
        """
        with anyio.fail_after(timeout):
            while True:
                snapshot = await self.orch.snapshot(self.job_id)
                if snapshot.job.status in _FINAL:
                    return snapshot
                busy = any(s.status in _BUSY for s in snapshot.steps)
                if (self.eager or not busy) and await self.act(snapshot):
                    continue
                if not busy:
                    return snapshot
                # Notifications may be lost (broker contract), so the wait is bounded.
                await self.orch.broker.wait_job(self.job_id, snapshot.version, timeout=1.0)

    async def act(self, snapshot: Snapshot) -> int:
        """Take every action the snapshot offers that this operator handles."""
        taken = 0
        for offer in snapshot.actions:
            if offer.step is None or not offer.count:
                continue
            if offer.action == "submit":
                taken += await self._submit(offer.step)
            elif offer.action == "retry" and self.retry_failed:
                taken += await self._retry(offer.step)
        self.actions += taken
        return taken

    async def _submit(self, step: str) -> int:
        waiting = await all_items(self.orch, self.job_id, step, "awaiting_input")
        if step == "contact_search":
            payloads = {i.id: await self.decisions.search_again(i) for i in waiting}
            return await self._send(step, payloads, "search again / manual entry")
        if step == "company_selection":
            found = await all_items(self.orch, self.job_id, "contact_search")
            candidates = {i.id: (i.output or {}).get("candidates") or [] for i in found}
            payloads = {
                i.id: await self.decisions.choose_company(i, candidates.get(i.id, []))
                for i in waiting
            }
            return await self._send(step, payloads, "company choice")
        if step == "account_setup_configuration":
            menus = {
                i.id: ((i.output or {}).get("menuExtraction") or {}).get("menu_id")
                for i in await all_items(self.orch, self.job_id, "menu_branding")
            }
            defaults, configs = await self.decisions.configure(waiting, menus)
            return await self._send(step, configs, "configuration", defaults)
        return 0

    async def _send(
        self,
        step: str,
        payloads: Mapping[str, dict[str, Any] | None],
        what: str,
        defaults: dict[str, Any] | None = None,
    ) -> int:
        chosen = {item_id: p for item_id, p in payloads.items() if p is not None}
        if not chosen:
            return 0
        try:
            await self.orch.submit(self.job_id, step, chosen, defaults=defaults, actor="operator")
        except Conflict as exc:  # the screen was stale: look again
            self.on_action(f"not submitted at {step}, it changed meanwhile: {exc}")
            return 0
        self.on_action(f"submitted {what} for {len(chosen)} restaurant(s) at {step}")
        return 1

    async def _retry(self, step: str) -> int:
        failed = await all_items(self.orch, self.job_id, step, "failed")
        fresh = [i for i in failed if (i.id, step) not in self.retried]
        chosen = await self.decisions.retry(step, fresh) if fresh else []
        if not chosen:
            return 0
        self.retried.update((item_id, step) for item_id in chosen)
        try:
            await self.orch.retry_items(self.job_id, step, chosen, actor="operator")
        except Conflict as exc:  # the screen was stale: look again
            self.on_action(f"not retried at {step}, it changed meanwhile: {exc}")
            return 0
        self.on_action(f"retried {len(chosen)} failed restaurant(s) at {step}")
        return 1
