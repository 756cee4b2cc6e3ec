"""Test support shipped with the package, for taskyard's own tests and for its users' tests
(docs/testing.md).

- `Harness` (`testing/harness.py`): the real app in this process, over `MemoryStore`, driven
  by an `httpx.AsyncClient` without sockets; `BlockingHarness` (`testing/blocking.py`) runs it
  for synchronous tests.
- `InProcessBackends`, `FakeBackend` (`testing/backends.py`): backends as ASGI apps in this
  process, their answers judged by the production rules.
- `FakeClock` (`testing/clock.py`): the domain's clock, moved by the test.
- `MemoryStore` (`testing/memory.py`): the domain's `Store` in plain Python, with SqlStore's
  semantics, so that domain logic is tested in milliseconds without a database.
- `lifespan` (`testing/lifespan.py`): an ASGI app's startup and shutdown, without a server.
"""

from taskyard.testing.backends import FakeBackend, InProcessBackends
from taskyard.testing.blocking import BlockingHarness
from taskyard.testing.clock import FakeClock
from taskyard.testing.harness import Harness, harness_settings
from taskyard.testing.lifespan import lifespan
from taskyard.testing.memory import MemoryStore

__all__ = [
    "BlockingHarness",
    "FakeBackend",
    "FakeClock",
    "Harness",
    "InProcessBackends",
    "MemoryStore",
    "harness_settings",
    "lifespan",
]
