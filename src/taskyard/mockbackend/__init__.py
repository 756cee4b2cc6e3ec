"""Mock inference backend for tests, demos and benchmarks."""

from .app import create_app, run
from .state import MockConfig

__all__ = ["MockConfig", "create_app", "run"]
