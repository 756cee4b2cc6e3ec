"""The SDK's public surface: what `taskyard.client` exports, and the sync twin's freshness."""

from __future__ import annotations

import inspect

import taskyard.client
from taskyard.client import AsyncClient, Client
from tests.sdk.unasync import CLIENT, unasync


def test_exported_members() -> None:
    """`__all__` is exactly the public names of the package, each defined in the SDK."""
    public = {name for name in dir(taskyard.client) if not name.startswith("_")}
    modules = {name for name in public if inspect.ismodule(getattr(taskyard.client, name))}
    assert set(taskyard.client.__all__) == public - modules
    for name in taskyard.client.__all__:
        member = getattr(taskyard.client, name)
        module = getattr(member, "__module__", "taskyard.client")
        assert module.startswith("taskyard.client"), (name, module)


def test_the_sync_client_is_made_from_the_async_one() -> None:
    """`_sync.py` is `_async.py` without the awaits (regenerate: python -m tests.sdk.unasync)."""
    assert (CLIENT / "_sync.py").read_text() == unasync((CLIENT / "_async.py").read_text())


def test_both_clients_have_the_same_methods() -> None:
    """Each public method of one client is on the other, with the same parameters."""
    renamed = {"close": "aclose"}

    def methods(kind: type) -> dict[str, inspect.Signature]:
        return {
            renamed.get(name, name): inspect.signature(member)
            for name, member in vars(kind).items()
            if inspect.isfunction(member) and not name.startswith("_")
        }

    sync, asynchronous = methods(Client), methods(AsyncClient)
    assert sync.keys() == asynchronous.keys()
    for name, signature in sync.items():
        assert list(signature.parameters) == list(asynchronous[name].parameters), name
