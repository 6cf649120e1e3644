"""The lead scrape pipeline on stepflow: a fake scraping API, handlers, and a simulated person.

Run it from the repository root with either of:

    .venv/bin/python -m examples.lead_scrape
    .venv/bin/python examples/lead_scrape/app.py

The pipeline (``lead_scrape.yaml``) has four steps. Step 1 scans category listing pages
(one job item per page) and turns each page into the leads found on it. Steps 2 to 4
each process the leads a person passed in, five at a time, then wait for the person
again. Every step calls the same scraping API, which allows 10 calls per 60 s across the
whole process: all steps share one ``rate_limit`` key.

Nothing here is specific to stepflow's registration plugin: it uses only the public
core API (``Pipeline``, ``Handlers``, ``Orchestrator`` and the action verbs).
"""

from __future__ import annotations

import argparse
import copy
import random
import re
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import yaml

from stepflow import (
    HandlerContext,
    Handlers,
    Item,
    ItemStatus,
    Orchestrator,
    PermanentError,
    Pipeline,
    Snapshot,
    TransientError,
)
from stepflow.ports import Clock

__all__ = [
    "DEFINITION",
    "STEP_KEYS",
    "Call",
    "FailureRates",
    "FakeScraper",
    "LeadRegistry",
    "RunReport",
    "ScrapeNotFound",
    "ScrapeUnavailable",
    "WallClock",
    "bind",
    "busiest_window",
    "load_pipeline",
    "main",
    "page_items",
    "run_person",
    "summary_rows",
]

DEFINITION = Path(__file__).with_name("lead_scrape.yaml")
STEP_KEYS = ("category_scan", "store_enrichment", "google_lookup", "ordering_discovery")
#: The real window of the scraping API's rate limit, in seconds.
REAL_WINDOW = 60.0

# -- the pipeline -----------------------------------------------------------------------


def load_pipeline(window: float = REAL_WINDOW) -> Pipeline:
    """The pipeline from ``lead_scrape.yaml``, with its time scaled to ``window``.

    ``window`` replaces the 60 s of the rate limit; retry waits shrink by the same
    factor, so a demo with a 1 s window runs 60 times faster than the real thing.
    """
    if window <= 0:
        raise ValueError(f"the rate-limit window must be positive, got {window}")
    data = yaml.safe_load(DEFINITION.read_text(encoding="utf-8"))
    scale = window / REAL_WINDOW
    for step in data["steps"]:
        # YAML aliases share one dict between steps: scale a copy for each.
        step["rate_limit"] = copy.deepcopy(step["rate_limit"])
        step["rate_limit"]["per_seconds"] *= scale
        step["retry"] = copy.deepcopy(step["retry"])
        step["retry"]["initial_delay"] *= scale
    return Pipeline.load(data)


def page_items(pages: int, first_page: int = 1) -> list[dict[str, Any]]:
    """The job's input: one item per category listing page to scan."""
    return [
        {"key": f"page-{n}", "data": {"page": n}} for n in range(first_page, first_page + pages)
    ]


# -- a clock that reads the system time (the orchestrator and the fake share it) ----------


class WallClock(Clock):
    """System time and anyio sleeps; the fake API logs its calls on the same clock."""

    def now(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(max(0.0, seconds))


# -- the fake scraping API ----------------------------------------------------------------


class ScrapeUnavailable(Exception):
    """The API answered 503 or timed out: worth trying again."""


class ScrapeNotFound(Exception):
    """The API answered 404 for this page: trying again will not help."""


@dataclass(frozen=True, slots=True)
class FailureRates:
    """Chances of each injected failure.

    ``transient`` is drawn for every call; ``not_found`` and ``bad_data`` once per
    target (a store link or a restaurant), so those failures repeat on every attempt.
    """

    transient: float = 0.12
    not_found: float = 0.03
    bad_data: float = 0.05

    @classmethod
    def none(cls) -> FailureRates:
        return cls(transient=0.0, not_found=0.0, bad_data=0.0)


@dataclass(frozen=True, slots=True)
class Call:
    """One call to the fake API, as the test and the summary read it."""

    method: str
    target: str
    start: float
    end: float
    outcome: str  # ok, transient, not_found, bad_data


_OUTCOMES = ("ok", "transient", "not_found", "bad_data")
_FIRST = ("Golden", "Little", "Red", "Blue", "Happy", "Old", "Green", "Lucky", "Royal", "Wild")
_SECOND = ("Dragon", "Lotus", "Olive", "Fern", "Harbour", "Kiwi", "Tui", "Pohutukawa", "Ember")
_KIND = ("Kitchen", "Pizza", "Noodle Bar", "Cafe", "Grill", "Curry House", "Sushi", "Bistro")
_CUISINES = ("pizza", "thai", "indian", "japanese", "burgers", "chinese", "vegan", "cafe")
_CHAINS = ("McDonald's", "KFC", "Burger King", "Domino's", "Subway")
_PLATFORMS = ("bite", "bopple", "foodhub", "gloriafood", "mobi2go", "mryum", "tabin")
_MARKETPLACES = ("ubereats", "doordash", "menulog", "delivereasy")


class FakeScraper:
    """A deterministic stand-in for the scraping API (Firecrawl in the original).

    Every random choice is drawn from its own ``random.Random`` seeded by the seed, the
    method, the target and (for per-call failures) the call number, so the outcome of a
    call does not depend on how concurrent calls interleave. Tests can also ``script``
    the outcomes of the next calls for one target. Every call is appended to
    :attr:`calls` with its start and end on ``clock``.
    """

    def __init__(
        self,
        *,
        seed: int = 7,
        clock: Clock | None = None,
        latency: float = 0.05,
        failures: FailureRates | None = None,
        stores_per_page: int = 8,
        country: str = "nz",
    ) -> None:
        self.seed = seed
        self.clock = clock or WallClock()
        self.latency = latency
        self.failures = failures if failures is not None else FailureRates()
        self.stores_per_page = stores_per_page
        self.country = country
        self.calls: list[Call] = []
        self._numbers: Counter[tuple[str, str]] = Counter()
        self._scripts: dict[tuple[str, str], list[str]] = {}

    # -- test hooks -------------------------------------------------------------------

    def script(self, method: str, target: str, *outcomes: str) -> None:
        """The next calls of ``method`` for ``target`` end with these outcomes, in order."""
        unknown = set(outcomes) - set(_OUTCOMES)
        if unknown:
            raise ValueError(f"unknown outcomes {sorted(unknown)}; use {_OUTCOMES}")
        self._scripts.setdefault((method, target), []).extend(outcomes)

    def calls_of(self, method: str, target: str | None = None) -> list[Call]:
        return [c for c in self.calls if c.method == method and target in (None, c.target)]

    # -- the catalogue (what the "web" holds) -------------------------------------------

    def _rng(self, *parts: object) -> random.Random:
        return random.Random("|".join(str(p) for p in (self.seed, *parts)))

    def category_url(self, meta: dict[str, Any], page: int) -> str:
        city = f"{meta.get('city_code', 'wellington')}-{meta.get('region_code', 'wgn')}"
        cuisine = meta.get("cuisine", "pizza")
        return f"https://www.ubereats.com/{self.country}/category/{city}/{cuisine}?page={page}"

    def listing(self, page: int) -> list[dict[str, str]]:
        """The raw entries on a listing page, before any filtering."""
        rng = self._rng("listing", page)
        entries: list[dict[str, str]] = []
        for n in range(self.stores_per_page):
            name = f"{rng.choice(_FIRST)} {rng.choice(_SECOND)} {rng.choice(_KIND)}"
            slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
            link = f"https://www.ubereats.com/{self.country}/store/{slug}-p{page}n{n}"
            entries.append({"restaurant_name": name, "store_link": link})
        if rng.random() < 0.5:  # a chain the business does not want
            chain = rng.choice(_CHAINS)
            slug = re.sub(r"[^a-z0-9]+", "-", chain.lower()).strip("-")
            link = f"https://www.ubereats.com/{self.country}/store/{slug}-{page}"
            entries.append({"restaurant_name": chain, "store_link": link})
        if rng.random() < 0.3:  # a promotion tile, not a store
            link = f"https://www.ubereats.com/{self.country}/promo/deal-{page}"
            entries.append({"restaurant_name": "Deals near you", "store_link": link})
        previous = self.listing(page - 1) if page > 1 else []
        if previous:  # a sponsored store from the page before shows up again
            entries.insert(rng.randrange(len(entries) + 1), previous[0])
        return entries

    def _store(self, link: str) -> dict[str, Any]:
        rng = self._rng("store", link)
        return {
            "number_of_reviews": rng.randrange(0, 2000),
            "average_review_rating": round(rng.uniform(3.2, 5.0), 1),
            "address": f"{rng.randrange(1, 400)} {rng.choice(_SECOND)} Street, Wellington",
            "cuisine": sorted(set(rng.sample(_CUISINES, rng.randrange(1, 3)))),
            "price_rating": rng.randrange(1, 5),
            "og_image": f"{link}/og.jpg",
        }

    def _business(self, name: str) -> dict[str, Any]:
        rng = self._rng("google", name)
        slug = re.sub(r"[^a-z0-9]+", "", name.lower())
        prefix = rng.choice(("+64 4", "04", "+64 21", "+61 2"))
        has_site = rng.random() < 0.9
        return {
            "phone": f"{prefix} {rng.randrange(100, 999)} {rng.randrange(1000, 9999)}",
            "website_url": f"https://www.{slug}.co.nz" if has_site else None,
            "opening_hours": [
                {"day": day, "open": "11:00", "close": "21:30", "period": "all day"}
                for day in ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
            ],
            "google_address": f"{rng.randrange(1, 400)} Cuba Street, Wellington",
            "google_rating": round(rng.uniform(3.0, 5.0), 1),
            "google_reviews_count": rng.randrange(0, 900),
            "instagram_url": f"https://www.instagram.com/{slug}",
            "facebook_url": f"https://www.facebook.com/{slug}",
        }

    def _ordering(self, website: str) -> list[dict[str, str]]:
        rng = self._rng("ordering", website)
        links = []
        if rng.random() < 0.6:
            platform = rng.choice(_PLATFORMS)
            links.append(
                {"url": f"https://order.{platform}.com/r/{rng.randrange(10**5)}", "text": "Order"}
            )
        if rng.random() < 0.5:
            market = rng.choice(_MARKETPLACES)
            links.append({"url": f"https://www.{market}.com/store/x", "text": "Delivery"})
        return [{**link, "location": "header"} for link in links]

    # -- calls --------------------------------------------------------------------------

    async def _call(self, method: str, target: str) -> str:
        """Log one call, wait the latency, and decide its outcome."""
        key = (method, target)
        self._numbers[key] += 1
        number = self._numbers[key]
        start = self.clock.now()
        script = self._scripts.get(key)
        if script:
            outcome = script.pop(0)
        else:
            fate = self._rng("fate", method, target).random()
            if fate < self.failures.not_found:
                outcome = "not_found"
            elif fate < self.failures.not_found + self.failures.bad_data:
                outcome = "bad_data"
            elif self._rng("call", method, target, number).random() < self.failures.transient:
                outcome = "transient"
            else:
                outcome = "ok"
        if method == "scan_category" and outcome == "bad_data":
            outcome = "ok"  # a listing has no fields to get wrong
        if self.latency:
            await self.clock.sleep(self.latency)
        self.calls.append(Call(method, target, start, self.clock.now(), outcome))
        if outcome == "transient":
            raise ScrapeUnavailable(f"{method} {target}: 503 service unavailable")
        if outcome == "not_found":
            raise ScrapeNotFound(f"{method} {target}: 404 not found")
        return outcome

    async def scan_category(self, url: str, page: int) -> list[dict[str, str]]:
        await self._call("scan_category", url)
        return [dict(entry) for entry in self.listing(page)]

    async def scrape_store(self, link: str) -> dict[str, Any]:
        outcome = await self._call("scrape_store", link)
        data = self._store(link)
        if outcome == "bad_data":
            data["average_review_rating"] = 7.5  # the model misread "75 %" as a rating
        return data

    async def google_lookup(self, name: str, address: str | None) -> dict[str, Any]:
        outcome = await self._call("google_lookup", name)
        data = self._business(name)
        if outcome == "bad_data":
            data["phone"] = "555-0199"  # a US number: not a NZ/AU lead
        return data

    async def find_ordering_links(self, website: str) -> list[dict[str, str]]:
        outcome = await self._call("find_ordering_links", website)
        links = self._ordering(website)
        if outcome == "bad_data":
            links.append({"url": "www.nowhere", "text": None, "location": 3})  # type: ignore[dict-item]
        return links


def busiest_window(calls: Iterable[Call], window: float) -> int:
    """The most calls that started within any ``window`` seconds (half-open)."""
    starts = sorted(c.start for c in calls)
    best = 0
    j = 0
    for i, start in enumerate(starts):
        while j < len(starts) and starts[j] < start + window:
            j += 1
        best = max(best, j - i)
    return best


# -- validation (the original's VALIDATION_RULES) -----------------------------------------

PHONE = re.compile(r"^(\+64|\+61|0)\d{7,10}$")  # NZ/AU, once spaces and dashes are gone
NON_ICP = frozenset(name.lower() for name in _CHAINS)


def _invalid(step: str, problems: list[str]) -> None:
    if problems:
        raise PermanentError(f"{step}: invalid data: {'; '.join(problems)}")


def _check_store(data: dict[str, Any]) -> None:
    problems = []
    rating = data.get("average_review_rating")
    if rating is not None and not (isinstance(rating, int | float) and 0 <= rating <= 5):
        problems.append(f"average_review_rating {rating!r} is not between 0 and 5")
    if not isinstance(data.get("cuisine"), list):
        problems.append("cuisine is not a list")
    price = data.get("price_rating")
    if price is not None and price not in (1, 2, 3, 4):
        problems.append(f"price_rating {price!r} is not 1 to 4")
    _invalid("store page", problems)


def _check_business(data: dict[str, Any]) -> None:
    problems = []
    phone = data.get("phone")
    if phone is not None and not PHONE.match(re.sub(r"[\s\-()]", "", str(phone))):
        problems.append(f"phone {phone!r} is not a NZ/AU number")
    website = data.get("website_url")
    if website is not None and not str(website).startswith("http"):
        problems.append(f"website_url {website!r} does not start with http")
    for field_name, domain in (
        ("instagram_url", "instagram.com"),
        ("facebook_url", "facebook.com"),
    ):
        value = data.get(field_name)
        if value is not None and domain not in str(value):
            problems.append(f"{field_name} {value!r} is not on {domain}")
    _invalid("google lookup", problems)


def _check_links(links: list[dict[str, Any]]) -> None:
    problems = [
        f"ordering link {link.get('url')!r} is not a URL"
        for link in links
        if not str(link.get("url", "")).startswith("http")
    ]
    _invalid("ordering discovery", problems)


def _domain_match(url: str, names: Iterable[str]) -> str | None:
    host = re.sub(r"^https?://", "", url).split("/", 1)[0].lower()
    return next((name for name in names if name in host), None)


# -- de-duplication within a job ------------------------------------------------------------


@dataclass
class LeadRegistry:
    """Which page item first claimed each store link, per job.

    Pages are scanned in parallel, so two pages can list the same store. The first
    page to finish its scan claims the link; later pages drop it as a duplicate. A
    page that runs again (a retry, or a lost lease) keeps the links it claimed, so a
    rerun emits the same leads. Claim and emit happen with no ``await`` in between,
    so no other handler on the event loop can interleave.

    Limit, stated plainly: this memory lives in the process. After a restart, a page
    that runs again cannot see what other pages claimed before, and may emit a
    duplicate; a durable version would keep the claims in the storage.
    """

    claims: dict[str, dict[str, str]] = field(default_factory=dict)

    def claim(self, job_id: str, link: str, page_item: str) -> bool:
        owner = self.claims.setdefault(job_id, {}).setdefault(link, page_item)
        return owner == page_item


# -- handlers ---------------------------------------------------------------------------------


async def _api(call: Awaitable[Any]) -> Any:
    """Turn the fake API's errors into stepflow's error kinds."""
    try:
        return await call
    except ScrapeUnavailable as exc:
        raise TransientError(str(exc)) from exc
    except ScrapeNotFound as exc:
        raise PermanentError(str(exc)) from exc


def bind(scraper: FakeScraper, registry: LeadRegistry | None = None) -> Handlers:
    """Bind the pipeline's four handler keys to ``scraper``."""
    registry = registry or LeadRegistry()
    handlers = Handlers()

    @handlers.handler("scan_category_page")
    async def scan_category_page(ctx: HandlerContext) -> dict[str, Any]:
        page = int(ctx.data["page"])
        url = scraper.category_url(dict(ctx.job_metadata), page)
        entries = await _api(scraper.scan_category(url, page))
        kept: list[dict[str, str]] = []
        counts: Counter[str] = Counter()
        for entry in entries:
            name = str(entry.get("restaurant_name") or "").strip()
            link = str(entry.get("store_link") or "")
            if not name or "ubereats.com" not in link or "/store/" not in link:
                counts["invalid"] += 1
            elif name.lower() in NON_ICP:
                counts["excluded"] += 1
            elif any(k["store_link"] == link for k in kept):
                counts["duplicates"] += 1
            else:
                kept.append({"restaurant_name": name, "store_link": link})
        # Claim and emit with no await in between (see LeadRegistry).
        for lead in kept:
            if registry.claim(ctx.job_id, lead["store_link"], ctx.item_id):
                key = "lead-" + lead["store_link"].rsplit("/", 1)[-1]
                ctx.emit(key, {**lead, "source_page": page})
                counts["leads"] += 1
            else:
                counts["duplicates"] += 1
        return {"page": page, "url": url, "found": len(entries), **counts}

    @handlers.handler("enrich_store_page")
    async def enrich_store_page(ctx: HandlerContext) -> dict[str, Any]:
        data = await _api(scraper.scrape_store(ctx.data["store_link"]))
        _check_store(data)
        return {f"ubereats_{key}": value for key, value in data.items()}

    @handlers.handler("lookup_google_business")
    async def lookup_google_business(ctx: HandlerContext) -> dict[str, Any]:
        address = (ctx.outputs.get("store_enrichment") or {}).get("ubereats_address")
        data: dict[str, Any] = await _api(
            scraper.google_lookup(ctx.data["restaurant_name"], address)
        )
        _check_business(data)
        return data

    @handlers.handler("discover_ordering_platform")
    async def discover_ordering_platform(ctx: HandlerContext) -> dict[str, Any]:
        website = (ctx.outputs.get("google_lookup") or {}).get("website_url")
        if not website:
            ctx.skip("no website to search for ordering links")
        links = await _api(scraper.find_ordering_links(website))
        _check_links(links)
        platform = next(
            (
                (link, name)
                for link in links
                if (name := _domain_match(link["url"], _PLATFORMS)) is not None
            ),
            None,
        )
        marketplaces = sorted(
            {name for link in links if (name := _domain_match(link["url"], _MARKETPLACES))}
        )
        return {
            "ordering_links": links,
            "ordering_platform_url": platform[0]["url"] if platform else None,
            "ordering_platform_name": platform[1] if platform else None,
            "ordering_source": "website" if platform else None,
            "online_ordering_platform": bool(platform),
            "online_ordering_handles_delivery": bool(marketplaces),
            "delivery_marketplaces": marketplaces,
        }

    return handlers


# -- the simulated person ------------------------------------------------------------------

Settle = Callable[[str], Awaitable[Snapshot]]


@dataclass
class RunReport:
    """What the simulated person did."""

    job_id: str
    snapshot: Snapshot
    passed: dict[str, int] = field(default_factory=dict)
    retried: dict[str, int] = field(default_factory=dict)
    discarded: dict[str, int] = field(default_factory=dict)


async def _all(orch: Orchestrator, job_id: str, step: str, status: str) -> list[Item]:
    page = await orch.list_items(job_id, step, status=status, limit=1000)
    items = list(page.items)
    while page.next_cursor is not None:
        page = await orch.list_items(
            job_id, step, status=status, limit=1000, cursor=page.next_cursor
        )
        items += page.items
    return items


async def run_person(
    orch: Orchestrator,
    job_id: str,
    settle: Settle,
    *,
    retry_failed: bool = True,
    actor: str = "lead-reviewer",
) -> RunReport:
    """Act as the person at each step in turn: retry failures once, then pass the leads.

    ``settle(job_id)`` must return once nothing runs (``orch.wait`` on a real clock; a
    test moves its fake clock instead). At step 1, page items that yielded no new lead
    are still ``processed`` there: they are not leads, so the person discards them.
    """
    snapshot = await settle(job_id)
    report = RunReport(job_id, snapshot)
    for step in STEP_KEYS:
        failed = await _all(orch, job_id, step, "failed")
        if retry_failed and failed:
            await orch.retry_items(job_id, step, [i.id for i in failed], actor=actor)
            report.retried[step] = len(failed)
            await settle(job_id)
        ready = await _all(orch, job_id, step, "processed")
        leads = [i for i in ready if "store_link" in i.data]
        empty_pages = [i for i in ready if "store_link" not in i.data]
        if empty_pages:
            await orch.discard_items(job_id, step, [i.id for i in empty_pages], actor=actor)
            report.discarded[step] = len(empty_pages)
        if leads:
            await orch.pass_items(job_id, step, [i.id for i in leads], start_next=True, actor=actor)
            report.passed[step] = len(leads)
            await settle(job_id)
    report.snapshot = await orch.snapshot(job_id)
    return report


# -- the summary ----------------------------------------------------------------------------

COLUMNS = ("step", "status", "received", "processed", "passed", "failed", "other")


def summary_rows(snapshot: Snapshot) -> list[tuple[str, ...]]:
    """One row per step, from the snapshot's counters only.

    ``received``: every item that reached the step (at step 1: the pages and the leads
    they created). ``processed``: items whose handler finished there (processed, passed
    or failed, as the original recounts it). ``other``: anything else, e.g. the pages
    at step 1 that ended ``cancelled`` because they expanded into leads.
    """
    rows: list[tuple[str, ...]] = []
    for view in snapshot.steps:
        counts = view.counts
        processed = sum(counts.get(s, 0) for s in (ItemStatus.PROCESSED, ItemStatus.PASSED))
        failed = counts.get(ItemStatus.FAILED, 0)
        known = processed + failed
        other = {
            status.value: n
            for status, n in counts.items()
            if status not in (ItemStatus.PROCESSED, ItemStatus.PASSED, ItemStatus.FAILED) and n
        }
        assert view.received == known + sum(other.values())
        rows.append(
            (
                view.name,
                view.status.value,
                str(view.received),
                str(processed + failed),
                str(counts.get(ItemStatus.PASSED, 0)),
                str(failed),
                ", ".join(f"{n} {s}" for s, n in other.items()) or "-",
            )
        )
    return rows


def format_table(rows: list[tuple[str, ...]]) -> str:
    table = [COLUMNS, *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


# -- main -------------------------------------------------------------------------------------


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m examples.lead_scrape", description="Run the lead scrape pipeline once."
    )
    parser.add_argument(
        "--window",
        type=float,
        default=1.0,
        help="seconds the 10-call rate-limit window lasts (the real API: 60); "
        "retry waits shrink by the same factor (default: 1.0)",
    )
    parser.add_argument("--pages", type=int, default=3, help="listing pages to scan (default 3)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the fake API (default 7)")
    parser.add_argument(
        "--latency", type=float, default=0.05, help="seconds per fake API call (default 0.05)"
    )
    return parser.parse_args(argv)


async def _run(args: argparse.Namespace) -> int:
    clock = WallClock()
    scraper = FakeScraper(seed=args.seed, clock=clock, latency=args.latency)
    pipeline = load_pipeline(args.window)
    began = time.monotonic()
    async with Orchestrator(handlers=bind(scraper), pipelines=[pipeline], clock=clock) as orch:
        job = await orch.create_job(
            pipeline.name,
            page_items(args.pages),
            metadata={"country": "nz", "city_code": "wellington", "region_code": "wgn"},
        )
        print(
            f"job {job.id}: scanning {args.pages} listing pages (rate limit 10 per "
            f"{args.window:g} s, shared by all steps)"
        )

        async def settle(job_id: str) -> Snapshot:
            return await orch.wait(job_id, timeout=120)

        report = await run_person(orch, job.id, settle)
    elapsed = time.monotonic() - began
    snap = report.snapshot
    print()
    print(format_table(summary_rows(snap)))
    print()
    print(f"job {snap.job.status.value}: {snap.totals}")
    print(
        f"person: passed {report.passed}, retried {report.retried}, "
        f"discarded empty pages {report.discarded}"
    )
    outcomes = Counter(c.outcome for c in scraper.calls)
    print(
        f"api calls: {len(scraper.calls)} {dict(sorted(outcomes.items()))}; busiest "
        f"{args.window:g} s window: {busiest_window(scraper.calls, args.window)} calls "
        f"(limit 10)"
    )
    print(f"wall time: {elapsed:.1f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    return anyio.run(_run, _parse(argv))


if __name__ == "__main__":
    sys.exit(main())
