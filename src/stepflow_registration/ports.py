"""The services a host provides to run the registration, as typed Protocols.

Design decision: the plugin never talks to a real API. It names what it needs — menu
and branding extraction, the company register, and one call per account-setup
sub-step — as structural Protocols, so a host passes any object with these methods
(its HTTP clients, a queue, the fakes) and mypy checks the fit. Services report
failures with the small, transport-neutral :class:`ServiceError` family below (or
stepflow's own errors); the handler adapters turn them into stepflow's retry classes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict

from .models import AccountSetupConfig

__all__ = [
    "AccountSetup",
    "AccountSetupRequest",
    "BrandingExtraction",
    "CompanyCandidate",
    "CompanyDetails",
    "CompanyRegister",
    "MenuExtraction",
    "RegistrationServices",
    "Restaurant",
    "ServiceError",
    "ServiceRejected",
    "ServiceThrottled",
    "ServiceTimedOut",
    "ServiceUnavailable",
]


# -- data crossing the ports -------------------------------------------------------------


class Restaurant(BaseModel):
    """A restaurant as an item of the job: the item key plus the item data."""

    model_config = ConfigDict(frozen=True, extra="allow")

    key: str
    name: str
    street: str = ""
    city: str = ""
    website: str | None = None
    ubereats_url: str | None = None
    phone: str | None = None


class CompanyCandidate(BaseModel):
    """A company register entry that may be the restaurant's operator."""

    company_number: str
    company_name: str
    address: str = ""
    status: str = "REGISTERED"
    match: Literal["name", "address", "manual"] = "name"


class CompanyDetails(BaseModel):
    """What the register knows about one company, with a contact chosen from it."""

    company_number: str
    company_name: str
    nzbn: str | None = None
    gst_number: str | None = None
    directors: list[str] = []
    contact_name: str | None = None
    full_legal_name: str | None = None
    contact_email: str | None = None
    contact_phone: str | None = None


class AccountSetupRequest(BaseModel):
    """Everything one account-setup sub-step call gets.

    ``previous`` holds the outputs of the sub-steps that already completed for this
    restaurant (``previous["codeGeneration"]["codeInjectionId"]`` and so on).
    """

    model_config = ConfigDict(frozen=True)

    restaurant: Restaurant
    config: AccountSetupConfig
    company: Mapping[str, Any] | None = None
    previous: Mapping[str, Any] = {}
    idempotency_key: str
    attempt: int = 1


# -- failures a service reports ------------------------------------------------------------


class ServiceError(Exception):
    """Base of the failures a service reports; the adapters classify each kind."""


class ServiceUnavailable(ServiceError):
    """A 5xx or a dropped connection: retried."""

    def __init__(self, message: str = "service unavailable", *, status: int = 503) -> None:
        super().__init__(f"{message} (HTTP {status})")
        self.status = status


class ServiceThrottled(ServiceError):
    """A 429: retried after ``retry_after`` seconds when the service said so."""

    def __init__(self, message: str = "too many requests", *, retry_after: float | None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ServiceTimedOut(ServiceError):
    """The call took longer than the service client allows: retried."""


class ServiceRejected(ServiceError):
    """A 4xx or bad data: never retried."""


# -- the ports -------------------------------------------------------------------------------


class MenuExtraction(Protocol):
    async def extract_menu(self, restaurant: Restaurant) -> Mapping[str, Any]:
        """Extract the menu (with option sets); the output must include ``menu_id``."""
        ...


class BrandingExtraction(Protocol):
    async def extract_branding(self, restaurant: Restaurant) -> Mapping[str, Any]:
        """Extract logo, favicon, og image and colours from the restaurant's website."""
        ...


class CompanyRegister(Protocol):
    async def search_by_name(self, restaurant: Restaurant, name: str) -> list[CompanyCandidate]:
        """Registered companies whose name matches ``name``."""
        ...

    async def search_by_address(
        self, restaurant: Restaurant, street: str, city: str
    ) -> list[CompanyCandidate]:
        """Registered companies at ``street``, ``city``."""
        ...

    async def company_details(self, restaurant: Restaurant, company_number: str) -> CompanyDetails:
        """The company's details, with the first active director as the contact."""
        ...


class AccountSetup(Protocol):
    """One method per account-setup sub-step; each returns a JSON-ready mapping."""

    async def register_account(self, request: AccountSetupRequest) -> Mapping[str, Any]: ...
    async def generate_code_injections(self, request: AccountSetupRequest) -> Mapping[str, Any]:
        """Must return ``codeInjectionId`` when code was generated (website config needs it)."""
        ...

    async def create_onboarding_user(self, request: AccountSetupRequest) -> Mapping[str, Any]: ...
    async def upload_images(self, request: AccountSetupRequest) -> Mapping[str, Any]: ...
    async def register_restaurant(self, request: AccountSetupRequest) -> Mapping[str, Any]: ...
    async def configure_website(self, request: AccountSetupRequest) -> Mapping[str, Any]: ...
    async def configure_services(self, request: AccountSetupRequest) -> Mapping[str, Any]: ...
    async def configure_payment(self, request: AccountSetupRequest) -> Mapping[str, Any]: ...
    async def import_menu(self, request: AccountSetupRequest) -> Mapping[str, Any]: ...
    async def sync_onboarding_user(self, request: AccountSetupRequest) -> Mapping[str, Any]: ...
    async def add_option_sets(self, request: AccountSetupRequest) -> Mapping[str, Any]: ...
    async def add_item_tags(self, request: AccountSetupRequest) -> Mapping[str, Any]: ...


class RegistrationServices(
    MenuExtraction, BrandingExtraction, CompanyRegister, AccountSetup, Protocol
):
    """Every service the registration pipeline needs, in one object."""
