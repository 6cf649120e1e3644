"""stepflow_registration: the six-step restaurant registration workflow, as data.

The pipeline lives in ``registration.yaml`` (:func:`load_pipeline`); a host binds its
own services (:mod:`.ports`) with :func:`bind` and runs jobs with a
:class:`stepflow.Orchestrator`. :mod:`.fakes` and :func:`run_demo` run it without any
real service.
"""

from .autopilot import Decisions, SimulatedDecisions, SimulatedOperator, default_configuration
from .demo import DemoSummary, run_demo
from .fakes import Call, FailureRates, FakeServices, fake_restaurants
from .handlers import SUBSTEP_METHODS, bind
from .models import (
    AccountSetupConfig,
    CompanyChoice,
    ContactSearchOverride,
    ManualCompany,
    SearchTerms,
)
from .pipeline import PIPELINE_NAME, load_pipeline, pipeline_data, scale_durations
from .ports import (
    AccountSetupRequest,
    CompanyCandidate,
    CompanyDetails,
    RegistrationServices,
    Restaurant,
    ServiceError,
    ServiceRejected,
    ServiceThrottled,
    ServiceTimedOut,
    ServiceUnavailable,
)

__all__ = [
    # the pipeline
    "PIPELINE_NAME",
    "load_pipeline",
    "pipeline_data",
    "scale_durations",
    # binding a host's services
    "bind",
    "SUBSTEP_METHODS",
    "RegistrationServices",
    "Restaurant",
    "CompanyCandidate",
    "CompanyDetails",
    "AccountSetupRequest",
    "ServiceError",
    "ServiceRejected",
    "ServiceThrottled",
    "ServiceTimedOut",
    "ServiceUnavailable",
    # what a person submits
    "AccountSetupConfig",
    "CompanyChoice",
    "ContactSearchOverride",
    "ManualCompany",
    "SearchTerms",
    # running without real services
    "Call",
    "FailureRates",
    "FakeServices",
    "fake_restaurants",
    "Decisions",
    "SimulatedDecisions",
    "SimulatedOperator",
    "default_configuration",
    "DemoSummary",
    "run_demo",
]
