"""Interactive answers for the demo's person steps, asked with ``rich.prompt``.

Design decision: the prompts implement the same :class:`~.autopilot.Decisions` protocol
as the simulated operator, so the interactive demo runs the exact same loop and
actions; only the source of the answers differs. Prompts block, so each one runs in a
worker thread and the engine keeps working meanwhile.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

import anyio
from rich.console import Console
from rich.prompt import Confirm, IntPrompt, Prompt

from stepflow import Item

from .autopilot import default_configuration

__all__ = ["PromptDecisions"]


class PromptDecisions:
    """Asks the person at the console; an empty answer keeps the suggested value."""

    def __init__(self, console: Console) -> None:
        self.console = console
        #: True while a question waits for an answer; progress output holds meanwhile.
        self.asking = False

    async def _ask(self, func: Any, *args: Any, **kwargs: Any) -> Any:
        self.asking = True
        try:
            return await anyio.to_thread.run_sync(
                partial(func, *args, console=self.console, **kwargs)
            )
        finally:
            self.asking = False

    async def search_again(self, item: Item) -> dict[str, Any] | None:
        name = str(item.data.get("name", item.key))
        self.console.print(f"[bold]{item.key}[/]: the register found no company for {name!r}.")
        if await self._ask(Confirm.ask, "Enter the company by hand?", default=False):
            company = await self._ask(Prompt.ask, "Company name", default=f"{name} Limited")
            return {"manual": {"company_name": company}}
        edited = await self._ask(Prompt.ask, "Search name", default=f"{name} Ltd")
        city = await self._ask(Prompt.ask, "City", default=str(item.data.get("city", "")))
        return {"search": {"name": edited, "street": "", "city": city}}

    async def choose_company(
        self, item: Item, candidates: list[dict[str, Any]]
    ) -> dict[str, Any] | None:
        self.console.print(f"[bold]{item.key}[/] {item.data.get('name', '')}: pick a company")
        for n, candidate in enumerate(candidates, start=1):
            self.console.print(
                f"  {n}. {candidate['company_name']} ({candidate['company_number']}, "
                f"matched by {candidate.get('match', '?')})"
            )
        self.console.print("  0. no match")
        choice = await self._ask(
            IntPrompt.ask, "Choice", choices=[str(n) for n in range(len(candidates) + 1)], default=1
        )
        if choice == 0:
            return {"no_match": True}
        return {"company_number": candidates[choice - 1]["company_number"]}

    async def configure(
        self, items: list[Item], menus: Mapping[str, str | None]
    ) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        defaults = default_configuration()
        self.console.print(f"Configure {len(items)} restaurant(s); settings apply to all.")
        for section, field in (
            ("menu", "uploadImages"),
            ("menu", "addOptionSets"),
            ("menu", "addItemTags"),
            ("onboarding", "createOnboardingUser"),
        ):
            defaults[section][field] = await self._ask(
                Confirm.ask, f"{section}.{field}?", default=bool(defaults[section][field])
            )
        defaults["onboarding"]["syncOnboardingRecord"] = defaults["onboarding"][
            "createOnboardingUser"
        ]
        payloads = {
            item.id: {
                "restaurant": {"name": item.data.get("name"), "subdomain": item.key},
                "menu": {"selectedMenuId": menus.get(item.id)},
            }
            for item in items
        }
        return defaults, payloads

    async def retry(self, step: str, items: list[Item]) -> list[str]:
        keys = ", ".join(item.key for item in items)
        if await self._ask(Confirm.ask, f"Retry {keys} at {step}?", default=True):
            return [item.id for item in items]
        return []
