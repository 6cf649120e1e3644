"""stepflow: durable step pipelines for work that people and machines share.

Define a :class:`Pipeline` as data, bind its handler keys in :class:`Handlers`, and run
jobs with an :class:`Orchestrator` (or :class:`SyncOrchestrator` from sync code).
"""

from ._app import App, load_app
from ._definitions import (
    Check,
    ErrorKind,
    Pipeline,
    RateLimit,
    RetryPolicy,
    Step,
    StepType,
    SubStep,
)
from ._errors import (
    ActionRejected,
    BindingError,
    Conflict,
    DefinitionError,
    DuplicateAction,
    InvalidInput,
    InvalidTransition,
    LeaseLost,
    LimitExceeded,
    NotFound,
    PermanentError,
    PermissionDenied,
    RateLimited,
    StaleWrite,
    StepError,
    StepflowError,
    StepTimeout,
    TransientError,
)
from ._handlers import ActionContext, ErrorClassifier, HandlerContext, Handlers
from ._models import (
    ActionRequest,
    ActionResult,
    Actor,
    AvailableAction,
    Event,
    Item,
    ItemPage,
    Job,
    PhaseView,
    Snapshot,
    StepView,
    SubStepView,
)
from ._orchestrator import ItemInput, Orchestrator
from ._states import ItemStatus, JobStatus, StepStatus, SubStepStatus
from .sync import SyncOrchestrator

__version__ = "0.1.0.dev0"

__all__ = [
    "ActionContext",
    "App",
    "ActionRejected",
    "ActionRequest",
    "ActionResult",
    "Actor",
    "AvailableAction",
    "BindingError",
    "Check",
    "Conflict",
    "DefinitionError",
    "DuplicateAction",
    "ErrorClassifier",
    "ErrorKind",
    "Event",
    "HandlerContext",
    "Handlers",
    "InvalidInput",
    "InvalidTransition",
    "Item",
    "ItemInput",
    "ItemPage",
    "ItemStatus",
    "Job",
    "JobStatus",
    "LeaseLost",
    "LimitExceeded",
    "NotFound",
    "Orchestrator",
    "PermanentError",
    "PermissionDenied",
    "PhaseView",
    "Pipeline",
    "RateLimit",
    "RateLimited",
    "RetryPolicy",
    "Snapshot",
    "StaleWrite",
    "Step",
    "StepError",
    "StepStatus",
    "StepTimeout",
    "StepType",
    "StepView",
    "StepflowError",
    "SubStep",
    "SubStepStatus",
    "SubStepView",
    "SyncOrchestrator",
    "TransientError",
    "__version__",
    "load_app",
]
