"""Every method of the `Store` protocol has a contract test (which says so with `covers`)."""

from __future__ import annotations

import importlib
import pkgutil

import tests.storage.contract as contract
from tests.storage.contract.support import COVERS, STORE_METHODS


def test_every_store_method_has_a_contract_test() -> None:
    assert {"add_task", "update_server", "claim_cancel", "close"} <= STORE_METHODS
    covered: set[str] = set()
    for module_info in pkgutil.iter_modules(contract.__path__, f"{contract.__name__}."):
        module = importlib.import_module(module_info.name)
        for name, member in vars(module).items():
            if name.startswith("test_"):
                covered |= getattr(member, COVERS, frozenset())
    assert sorted(STORE_METHODS - covered) == [], "Store methods without a contract test"
