"""Executors: where handler calls run."""

from .inprocess import InProcessExecutor

__all__ = ["InProcessExecutor"]
