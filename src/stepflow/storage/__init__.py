"""Storage backends behind the :class:`stepflow.ports.Storage` port."""

from .memory import MemoryStorage

__all__ = ["MemoryStorage"]
