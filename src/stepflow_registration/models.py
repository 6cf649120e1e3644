"""The payloads a person submits at the registration's person steps.

Design decision: each action is one pydantic model with defaults for everything a
person may leave out, so a UI can submit a partial payload, stepflow merges the bulk
"apply to all" defaults under it, and the stored payload is always complete. Rules
that need more than the payload itself (is this company one of the restaurant's
candidates?) are validators in :mod:`stepflow_registration.handlers`, not here.
"""

from __future__ import annotations

from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "AccountSection",
    "AccountSetupConfig",
    "CompanyChoice",
    "ContactSearchOverride",
    "ManualCompany",
    "MenuSection",
    "OnboardingSection",
    "PaymentSection",
    "RestaurantSection",
    "SearchTerms",
    "WebsiteSection",
]


class _Payload(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- step 2: contact search ------------------------------------------------------------


class SearchTerms(_Payload):
    """Edited terms for searching the company register again."""

    name: str = Field(min_length=1, max_length=200)
    street: str = Field("", max_length=200)
    city: str = Field("", max_length=100)


class ManualCompany(_Payload):
    """A company a person entered by hand when the register found nothing."""

    company_name: str = Field(min_length=1, max_length=200)
    company_number: str | None = Field(None, max_length=50)
    nzbn: str | None = Field(None, max_length=50)
    contact_name: str | None = Field(None, max_length=200)
    contact_email: str | None = Field(None, max_length=200)
    contact_phone: str | None = Field(None, max_length=50)


class ContactSearchOverride(_Payload):
    """Action ``contact_search_override``: search again with ``search``, or ``manual``."""

    search: SearchTerms | None = None
    manual: ManualCompany | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if (self.search is None) == (self.manual is None):
            raise ValueError("give exactly one of 'search' (edited terms) or 'manual' (details)")
        return self


# -- step 3: company selection -----------------------------------------------------------


class CompanyChoice(_Payload):
    """Action ``company_choice``: one candidate's ``company_number``, or ``no_match``."""

    company_number: str | None = Field(None, min_length=1, max_length=50)
    no_match: bool = False

    @model_validator(mode="after")
    def _one_answer(self) -> Self:
        if self.no_match and self.company_number is not None:
            raise ValueError("'no_match' cannot come with a company_number")
        if not self.no_match and self.company_number is None:
            raise ValueError("choose a company_number or set no_match: true")
        return self


# -- step 5: account setup configuration -------------------------------------------------


class AccountSection(_Payload):
    registerNewUser: bool = True
    email: str | None = None
    password: str | None = None
    phone: str | None = None


class RestaurantSection(_Payload):
    registrationMode: Literal[
        "existing_account_first_restaurant", "existing_account_additional_restaurant"
    ] = "existing_account_first_restaurant"
    name: str | None = None
    phone: str | None = None
    address: str | None = None
    city: str | None = None
    subdomain: str | None = None
    opening_hours: dict[str, str] = {}


class MenuSection(_Payload):
    selectedMenuId: str | None = None
    uploadImages: bool = False
    addOptionSets: bool = False
    addItemTags: bool = False


class WebsiteSection(_Payload):
    theme: str = "light"
    cuisines: list[str] = []
    primaryColor: str | None = None
    secondaryColor: str | None = None
    disableGradients: bool = False
    configureHeader: bool = False
    headerImageSource: str | None = None
    headerLogoSource: str | None = None
    navLogoSource: str | None = None
    navTextColor: str | None = None
    cardTextColor: str | None = None
    faviconSource: str | None = None
    itemLayout: Literal["list", "card"] = "list"


class PaymentSection(_Payload):
    includeStripeLink: bool = False


class OnboardingSection(_Payload):
    createOnboardingUser: bool = False
    syncOnboardingRecord: bool = False
    userName: str | None = None
    userEmail: str | None = None
    userPassword: str | None = None


class AccountSetupConfig(_Payload):
    """Action ``account_setup_config``: how to set up one restaurant's account.

    ``steps_enabled`` maps an account-setup sub-step key to ``False`` to skip it; keys
    left out run as their other conditions say.
    """

    account: AccountSection = AccountSection()
    restaurant: RestaurantSection = RestaurantSection()
    menu: MenuSection = MenuSection()
    website: WebsiteSection = WebsiteSection()
    payment: PaymentSection = PaymentSection()
    onboarding: OnboardingSection = OnboardingSection()
    steps_enabled: dict[str, bool] = {}
