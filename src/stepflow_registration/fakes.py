"""Fake registration services for the demo and for tests.

Design decision: every random choice (latency, injected failure, search results) is
drawn from its own ``random.Random`` seeded by ``(seed, method, restaurant, call
number)``, not from one shared stream, so the outcome of a call does not depend on how
concurrent calls happened to interleave: the same seed gives the same failures in
every run. Failures can also be scripted per (method, restaurant) for tests. Every call
is appended to :attr:`FakeServices.calls` with its start and end time, which is what
tests read to check ordering, parallelism, resumption and rate limits.
"""

from __future__ import annotations

import random
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import anyio

from stepflow.ports import Clock

from .ports import (
    AccountSetupRequest,
    CompanyCandidate,
    CompanyDetails,
    Restaurant,
    ServiceRejected,
    ServiceThrottled,
    ServiceTimedOut,
    ServiceUnavailable,
)

__all__ = ["FAILURE_KINDS", "Call", "FailureRates", "FakeServices", "fake_restaurants"]

#: The failure kinds a fake call can be made to raise (plus ``ok``).
FAILURE_KINDS = ("timeout", "rate_limited", "unavailable", "permanent")


@dataclass(frozen=True, slots=True)
class FailureRates:
    """Chance per call of each injected failure, and per restaurant of an empty search."""

    timeout: float = 0.0
    rate_limited: float = 0.0
    unavailable: float = 0.0
    permanent: float = 0.0
    no_candidates: float = 0.0

    @classmethod
    def realistic(cls, total: float = 0.06) -> FailureRates:
        """About ``total`` of calls fail (mostly retryable); 15 % of searches find nothing."""
        return cls(
            timeout=total * 0.25,
            rate_limited=total * 0.2,
            unavailable=total * 0.45,
            permanent=total * 0.1,
            no_candidates=0.15,
        )


class Call(NamedTuple):
    """One fake service call: which method, for which restaurant, when, and how it ended."""

    method: str
    restaurant: str
    start: float
    end: float
    outcome: str = "ok"


class FakeServices:
    """In-memory stand-ins for every registration service (see :mod:`.ports`)."""

    def __init__(
        self,
        *,
        seed: int = 0,
        latency: float = 0.002,
        failures: FailureRates | None = None,
        retry_after: float | None = 0.01,
        clock: Clock | None = None,
        no_candidates: Collection[str] = (),
    ) -> None:
        if latency < 0:
            raise ValueError("latency cannot be negative")
        self.seed = seed
        self.latency = latency
        self.failures = failures or FailureRates()
        self.retry_after = retry_after
        self.clock = clock
        self.calls: list[Call] = []
        self._no_candidates = set(no_candidates)
        self._counts: Counter[tuple[str, str]] = Counter()
        self._scripts: dict[tuple[str, str], deque[str]] = defaultdict(deque)
        self._outputs: dict[tuple[str, str], dict[str, Any]] = {}

    # -- configuring -------------------------------------------------------------------

    def script(self, method: str, restaurant: str, *outcomes: str) -> None:
        """The next calls of ``method`` for ``restaurant`` end with ``outcomes`` in turn."""
        for outcome in outcomes:
            if outcome != "ok" and outcome not in FAILURE_KINDS:
                raise ValueError(f"unknown outcome {outcome!r}")
        self._scripts[(method, restaurant)].extend(outcomes)

    def set_output(self, method: str, restaurant: str, output: Mapping[str, Any]) -> None:
        """Make ``method`` return ``output`` for ``restaurant`` instead of the default."""
        self._outputs[(method, restaurant)] = dict(output)

    def finds_nothing(self, restaurant: str) -> bool:
        """Whether the register search by the restaurant's own terms finds no candidates."""
        if restaurant in self._no_candidates:
            return True
        draw = random.Random(f"{self.seed}:no_candidates:{restaurant}").random()
        return draw < self.failures.no_candidates

    # -- reading the log ---------------------------------------------------------------

    def calls_of(self, method: str, restaurant: str | None = None) -> list[Call]:
        return [
            c
            for c in self.calls
            if c.method == method and (restaurant is None or c.restaurant == restaurant)
        ]

    @property
    def injected(self) -> Counter[str]:
        """How many calls ended with each injected failure kind."""
        return Counter(c.outcome for c in self.calls if c.outcome != "ok")

    # -- the machinery of one call -------------------------------------------------------

    def _now(self) -> float:
        return self.clock.now() if self.clock is not None else time.monotonic()

    async def _sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await anyio.lowlevel.checkpoint()
        elif self.clock is not None:
            await self.clock.sleep(seconds)
        else:
            await anyio.sleep(seconds)

    def _outcome(self, method: str, restaurant: str, rng: random.Random) -> str:
        script = self._scripts.get((method, restaurant))
        if script:
            return script.popleft()
        draw = rng.random()
        for kind in FAILURE_KINDS:
            draw -= getattr(self.failures, kind)
            if draw < 0:
                return kind
        return "ok"

    async def _call(
        self, method: str, restaurant: str, produce: Callable[[random.Random], Any]
    ) -> Any:
        number = self._counts[(method, restaurant)] = self._counts[(method, restaurant)] + 1
        rng = random.Random(f"{self.seed}:{method}:{restaurant}:{number}")
        outcome = self._outcome(method, restaurant, rng)
        start = self._now()
        try:
            await self._sleep(self.latency * rng.uniform(0.5, 1.5))
        finally:
            self.calls.append(Call(method, restaurant, start, self._now(), outcome))
        if outcome == "timeout":
            raise ServiceTimedOut(f"{method} timed out")
        if outcome == "rate_limited":
            raise ServiceThrottled(f"{method}: HTTP 429", retry_after=self.retry_after)
        if outcome == "unavailable":
            raise ServiceUnavailable(f"{method} failed", status=rng.choice((500, 502, 503)))
        if outcome == "permanent":
            raise ServiceRejected(f"{method} rejected the request (HTTP 422)")
        override = self._outputs.get((method, restaurant))
        return dict(override) if override is not None else produce(rng)

    # -- extraction ---------------------------------------------------------------------

    async def extract_menu(self, restaurant: Restaurant) -> Mapping[str, Any]:
        def menu(rng: random.Random) -> dict[str, Any]:
            return {
                "menu_id": f"menu-{restaurant.key}",
                "items": rng.randint(12, 120),
                "option_sets": rng.randint(0, 15),
            }

        result: Mapping[str, Any] = await self._call("extract_menu", restaurant.key, menu)
        return result

    async def extract_branding(self, restaurant: Restaurant) -> Mapping[str, Any]:
        def branding(rng: random.Random) -> dict[str, Any]:
            colour = f"#{rng.randrange(0x1000000):06x}"
            return {"logo": f"https://cdn.example/{restaurant.key}/logo.png", "primary": colour}

        result: Mapping[str, Any] = await self._call("extract_branding", restaurant.key, branding)
        return result

    # -- company register ------------------------------------------------------------------

    def _number(self, restaurant: str, n: int) -> str:
        base = random.Random(f"{self.seed}:company:{restaurant}").randrange(10**6, 10**7)
        return str(base * 10 + n)

    def _own_terms(self, restaurant: Restaurant, name: str | None) -> bool:
        return name is None or name == restaurant.name

    async def search_by_name(self, restaurant: Restaurant, name: str) -> list[CompanyCandidate]:
        def found(rng: random.Random) -> list[CompanyCandidate]:
            if self.finds_nothing(restaurant.key) and self._own_terms(restaurant, name):
                return []
            return [
                CompanyCandidate(
                    company_number=self._number(restaurant.key, 1),
                    company_name=f"{name} Limited",
                    match="name",
                ),
                CompanyCandidate(
                    company_number=self._number(restaurant.key, 2),
                    company_name=f"{name} Holdings Limited",
                    status="REMOVED" if rng.random() < 0.3 else "REGISTERED",
                    match="name",
                ),
            ]

        result: list[CompanyCandidate] = await self._call("search_by_name", restaurant.key, found)
        return result

    async def search_by_address(
        self, restaurant: Restaurant, street: str, city: str
    ) -> list[CompanyCandidate]:
        def found(rng: random.Random) -> list[CompanyCandidate]:
            if self.finds_nothing(restaurant.key) and street == restaurant.street:
                return []
            address = ", ".join(p for p in (street, city) if p)
            return [
                CompanyCandidate(  # the same company the name search finds: merged away
                    company_number=self._number(restaurant.key, 1),
                    company_name=f"{restaurant.name} Limited",
                    address=address,
                    match="address",
                ),
                CompanyCandidate(
                    company_number=self._number(restaurant.key, 3),
                    company_name=f"{city or 'Local'} Hospitality Limited",
                    address=address,
                    match="address",
                ),
            ]

        result: list[CompanyCandidate] = await self._call(
            "search_by_address", restaurant.key, found
        )
        return result

    async def company_details(self, restaurant: Restaurant, company_number: str) -> CompanyDetails:
        def details(rng: random.Random) -> CompanyDetails:
            director = rng.choice(("Aroha Smith", "Wei Chen", "Priya Patel", "Tom Brown"))
            return CompanyDetails(
                company_number=company_number,
                company_name=f"{restaurant.name} Limited",
                nzbn=f"9429{rng.randrange(10**9):09d}",
                gst_number=f"{rng.randrange(10**8, 10**9)}",
                directors=[director],
                contact_name=director,
                full_legal_name=director,
                contact_email=f"owner@{restaurant.key}.example",
                contact_phone=f"+64 9 {rng.randrange(10**6, 10**7)}",
            )

        def as_details(rng: random.Random) -> dict[str, Any]:
            return details(rng).model_dump(mode="json")

        raw = await self._call("company_details", restaurant.key, as_details)
        return CompanyDetails.model_validate(raw)

    # -- account setup: one method per sub-step ------------------------------------------

    async def _setup(
        self, method: str, request: AccountSetupRequest, **extra: Any
    ) -> Mapping[str, Any]:
        key = request.restaurant.key

        def done(rng: random.Random) -> dict[str, Any]:
            return {"ok": True, "ref": f"{method}-{key}-{rng.randrange(10**6)}", **extra}

        result: Mapping[str, Any] = await self._call(method, key, done)
        return result

    async def register_account(self, request: AccountSetupRequest) -> Mapping[str, Any]:
        return await self._setup("register_account", request)

    async def generate_code_injections(self, request: AccountSetupRequest) -> Mapping[str, Any]:
        key = request.restaurant.key
        return await self._setup("generate_code_injections", request, codeInjectionId=f"ci-{key}")

    async def create_onboarding_user(self, request: AccountSetupRequest) -> Mapping[str, Any]:
        return await self._setup("create_onboarding_user", request)

    async def upload_images(self, request: AccountSetupRequest) -> Mapping[str, Any]:
        return await self._setup("upload_images", request)

    async def register_restaurant(self, request: AccountSetupRequest) -> Mapping[str, Any]:
        return await self._setup("register_restaurant", request)

    async def configure_website(self, request: AccountSetupRequest) -> Mapping[str, Any]:
        return await self._setup("configure_website", request)

    async def configure_services(self, request: AccountSetupRequest) -> Mapping[str, Any]:
        return await self._setup("configure_services", request)

    async def configure_payment(self, request: AccountSetupRequest) -> Mapping[str, Any]:
        return await self._setup("configure_payment", request)

    async def import_menu(self, request: AccountSetupRequest) -> Mapping[str, Any]:
        return await self._setup("import_menu", request)

    async def sync_onboarding_user(self, request: AccountSetupRequest) -> Mapping[str, Any]:
        return await self._setup("sync_onboarding_user", request)

    async def add_option_sets(self, request: AccountSetupRequest) -> Mapping[str, Any]:
        return await self._setup("add_option_sets", request)

    async def add_item_tags(self, request: AccountSetupRequest) -> Mapping[str, Any]:
        return await self._setup("add_item_tags", request)


_NAMES = (
    "Harbour Noodle Bar", "Kauri Grill", "Little Saigon", "Mount Eden Pizza", "Ponsonby Thai",
    "Tamaki Sushi", "The Curry Leaf", "Waitemata Fish & Chips", "Zest Burgers", "Olive & Vine",
)  # fmt: skip
_STREETS = ("Queen St", "Ponsonby Rd", "Dominion Rd", "K Rd", "Broadway", "Victoria St")
_CITIES = ("Auckland", "Wellington", "Christchurch", "Hamilton", "Dunedin")


def fake_restaurants(count: int, *, seed: int = 0) -> list[dict[str, Any]]:
    """``count`` restaurant items (``{"key", "data"}``) with plausible, seeded data."""
    rng = random.Random(f"{seed}:restaurants")
    items = []
    for n in range(count):
        name = f"{rng.choice(_NAMES)} {n + 1}"
        slug = f"r{n + 1:03d}"
        items.append(
            {
                "key": slug,
                "data": {
                    "name": name,
                    "street": f"{rng.randint(1, 400)} {rng.choice(_STREETS)}",
                    "city": rng.choice(_CITIES),
                    "website": f"https://{slug}.example",
                    "ubereats_url": f"https://ubereats.example/store/{slug}",
                },
            }
        )
    return items
