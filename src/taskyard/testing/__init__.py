"""Test support shipped with the package, for taskyard's own tests and for its users' tests.

- `MemoryStore` (`testing/memory.py`): the domain's `Store` in plain Python, with SqlStore's
  semantics, so that domain logic is tested in milliseconds without a database.
"""

from taskyard.testing.memory import MemoryStore

__all__ = ["MemoryStore"]
