"""An application definition: the pipelines and handlers a worker process runs.

Design decision: a worker needs the host's definitions but not the host's process, so
the host exposes them as one importable object (``module:attribute``) — an :class:`App`
— and any number of ``stepflow worker`` processes, on any machine, build their own
orchestrator from it against the shared database.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._definitions import Pipeline
from ._errors import InvalidInput
from ._handlers import ErrorClassifier, Handlers
from ._orchestrator import Authorize, Orchestrator
from .ports import Storage

__all__ = ["App", "load_app"]


@dataclass
class App:
    """The pipelines, handlers and options a host's orchestrators are made from."""

    pipelines: Sequence[Pipeline]
    handlers: Handlers
    authorize: Authorize | None = None
    classifier: ErrorClassifier | None = None
    options: dict[str, Any] = field(default_factory=dict)  #: more Orchestrator arguments

    def orchestrator(self, storage: Storage | None = None, **overrides: Any) -> Orchestrator:
        """A new (not yet started) orchestrator for this app on ``storage``."""
        return Orchestrator(
            storage,
            handlers=self.handlers,
            pipelines=self.pipelines,
            authorize=self.authorize,
            classifier=self.classifier,
            **{**self.options, **overrides},
        )


def load_app(target: str) -> App:
    """Import ``module:attribute``; the attribute is an :class:`App` or makes one."""
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise InvalidInput(f"--app must look like module:attribute, got {target!r}")
    try:
        found: Any = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise InvalidInput(f"cannot load app {target!r}: {exc}") from None
    if not isinstance(found, App) and callable(found):
        maker: Callable[[], Any] = found
        found = maker()
    if not isinstance(found, App):
        raise InvalidInput(f"{target!r} is a {type(found).__name__}, not a stepflow.App")
    return found
