"""Event brokers: how waiting readers and idle workers learn that something changed."""

from .local import LocalEventBroker

__all__ = ["LocalEventBroker"]
