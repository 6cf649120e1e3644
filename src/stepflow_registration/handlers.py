"""Binding the pipeline's handler and action keys to a host's services.

Design decision: every handler here is a thin adapter — build the typed request from
the handler context, call one service method, classify its failure, return JSON. None
decides what runs next: order, dependencies and run conditions are in
``registration.yaml``. The only logic kept here is what a step *does* (merge two
searches, read the chosen company) and the one rule that needs an earlier step's
output to check a person's payload (the chosen company must be a candidate).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import anyio

from stepflow import (
    ActionContext,
    HandlerContext,
    Handlers,
    PermanentError,
    RateLimited,
    StepTimeout,
    TransientError,
)

from .models import AccountSetupConfig, CompanyChoice, ContactSearchOverride, SearchTerms
from .ports import (
    AccountSetupRequest,
    CompanyCandidate,
    RegistrationServices,
    Restaurant,
    ServiceRejected,
    ServiceThrottled,
    ServiceTimedOut,
    ServiceUnavailable,
)

__all__ = ["SUBSTEP_METHODS", "bind", "merge_candidates"]

#: Which :class:`~stepflow_registration.ports.AccountSetup` method runs each sub-step.
SUBSTEP_METHODS: Mapping[str, str] = {
    "cloudwaitressAccount": "register_account",
    "codeGeneration": "generate_code_injections",
    "createOnboardingUser": "create_onboarding_user",
    "uploadImages": "upload_images",
    "restaurantRegistration": "register_restaurant",
    "websiteConfig": "configure_website",
    "servicesConfig": "configure_services",
    "paymentConfig": "configure_payment",
    "menuImport": "import_menu",
    "syncOnboardingUser": "sync_onboarding_user",
    "optionSets": "add_option_sets",
    "itemTags": "add_item_tags",
}


@contextmanager
def classified() -> Iterator[None]:
    """Turn a service's :class:`~stepflow_registration.ports.ServiceError` into stepflow's."""
    try:
        yield
    except ServiceThrottled as exc:
        raise RateLimited(str(exc), retry_after=exc.retry_after) from exc
    except ServiceUnavailable as exc:
        raise TransientError(str(exc)) from exc
    except ServiceTimedOut as exc:
        raise StepTimeout(str(exc) or "service call timed out") from exc
    except ServiceRejected as exc:
        raise PermanentError(str(exc)) from exc


def restaurant_of(ctx: HandlerContext) -> Restaurant:
    return Restaurant.model_validate({**ctx.data, "key": ctx.item_key})


def merge_candidates(*found: list[CompanyCandidate]) -> list[CompanyCandidate]:
    """Registered candidates from every search, de-duplicated by company number."""
    merged: dict[str, CompanyCandidate] = {}
    for candidates in found:
        for candidate in candidates:
            if candidate.status == "REGISTERED":
                merged.setdefault(candidate.company_number, candidate)
    return list(merged.values())


def _company(outputs: Mapping[str, Any]) -> Mapping[str, Any] | None:
    details = outputs.get("company_details")
    if details:
        return dict(details)
    chosen = (outputs.get("contact_search") or {}).get("chosen")
    return dict(chosen) if chosen else None


def _account_setup(
    services: RegistrationServices, method_name: str
) -> Callable[[HandlerContext], Awaitable[dict[str, Any]]]:
    method = getattr(services, method_name)

    async def run(ctx: HandlerContext) -> dict[str, Any]:
        request = AccountSetupRequest(
            restaurant=restaurant_of(ctx),
            config=AccountSetupConfig.model_validate(
                ctx.outputs.get("account_setup_configuration") or {}
            ),
            company=_company(ctx.outputs),
            previous=dict(ctx.substep_outputs),
            idempotency_key=ctx.idempotency_key,
            attempt=ctx.attempt,
        )
        with classified():
            return dict(await method(request))

    run.__name__ = method_name
    return run


def _choice_is_a_candidate(choice: CompanyChoice, ctx: ActionContext) -> None:
    if choice.no_match:
        return
    candidates = (ctx.outputs.get("contact_search") or {}).get("candidates") or []
    numbers = sorted(str(c.get("company_number")) for c in candidates)
    if choice.company_number not in numbers:
        shown = ", ".join(numbers) or "none"
        raise ValueError(
            f"company {choice.company_number} is not a candidate for {ctx.item_key} "
            f"(candidates: {shown})"
        )


def bind(services: RegistrationServices) -> Handlers:
    """A :class:`~stepflow.Handlers` registry with every key of the pipeline bound."""
    handlers = Handlers()

    async def menu_extraction(ctx: HandlerContext) -> dict[str, Any]:
        with classified():
            return dict(await services.extract_menu(restaurant_of(ctx)))

    async def branding_extraction(ctx: HandlerContext) -> dict[str, Any]:
        with classified():
            return dict(await services.extract_branding(restaurant_of(ctx)))

    async def contact_search(ctx: HandlerContext) -> dict[str, Any]:
        restaurant = restaurant_of(ctx)
        override = ContactSearchOverride.model_validate(ctx.input) if ctx.input else None
        if override is not None and override.manual is not None:
            chosen = override.manual.model_dump(mode="json")
            return {"source": "manual", "query": None, "candidates": [], "chosen": chosen}
        terms = (override.search if override else None) or SearchTerms(
            name=restaurant.name, street=restaurant.street, city=restaurant.city
        )
        by_name, by_address = await _search_both(services, restaurant, terms)
        candidates = merge_candidates(by_name, by_address)
        if not candidates:
            ctx.ask_person(
                f"no candidates for name {terms.name!r} or address "
                f"{', '.join(p for p in (terms.street, terms.city) if p)!r}"
            )
        return {
            "source": "search",
            "query": terms.model_dump(mode="json"),
            "candidates": [c.model_dump(mode="json") for c in candidates],
            "chosen": None,
        }

    async def company_details(ctx: HandlerContext) -> dict[str, Any]:
        number = (ctx.outputs.get("company_selection") or {}).get("company_number")
        if not number:
            ctx.skip("no company was chosen at company_selection")
        with classified():
            details = await services.company_details(restaurant_of(ctx), str(number))
        return details.model_dump(mode="json")

    handlers.add("menuExtraction", menu_extraction)
    handlers.add("brandingExtraction", branding_extraction)
    handlers.add("contact_search", contact_search)
    handlers.add("company_details", company_details)
    for key, method_name in SUBSTEP_METHODS.items():
        handlers.add(key, _account_setup(services, method_name))
    handlers.action("contact_search_override", ContactSearchOverride)
    handlers.action("company_choice", CompanyChoice, validator=_choice_is_a_candidate)
    handlers.action("account_setup_config", AccountSetupConfig)
    return handlers


async def _search_both(
    services: RegistrationServices, restaurant: Restaurant, terms: SearchTerms
) -> tuple[list[CompanyCandidate], list[CompanyCandidate]]:
    """Search by name and by address at the same time; re-raise the first failure."""
    found: dict[str, list[CompanyCandidate]] = {"name": [], "address": []}
    failures: list[Exception] = []

    async def search(kind: str) -> None:
        try:
            with classified():
                if kind == "name":
                    found[kind] = await services.search_by_name(restaurant, terms.name)
                elif terms.street or terms.city:
                    found[kind] = await services.search_by_address(
                        restaurant, terms.street, terms.city
                    )
        except Exception as exc:  # noqa: BLE001 - re-raised below, outside the task group
            failures.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(search, "name")
        tg.start_soon(search, "address")
    if failures:
        raise failures[0]
    return found["name"], found["address"]
