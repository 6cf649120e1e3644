"""Test doubles and test suites for hosts and for stepflow itself.

``MemoryStorage`` is the in-memory storage (the documented test double), ``FakeClock``
a clock that moves only when told, and ``PipelineMachine`` a hypothesis state machine
that checks the invariants of any pipeline on any storage.
"""

from ..storage.memory import MemoryStorage
from .clock import FakeClock
from .stateful import PipelineMachine, pipeline_machine

__all__ = ["FakeClock", "MemoryStorage", "PipelineMachine", "pipeline_machine"]
