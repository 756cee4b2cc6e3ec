"""The domain is self-contained (docs/architecture.md): importing every module of
`taskyard.domain` in a fresh interpreter loads only the standard library, the domain itself and
the package's plain-Python leaves. `lint-imports` keeps the same rule on the import graph; this
test checks what an interpreter really loads, third-party modules and lazy imports included."""

from __future__ import annotations

import json
import subprocess
import sys

# The same leaves as the import-linter contract names in pyproject.toml.
ALLOWED_LEAVES = ("taskyard.errors", "taskyard.jsonsafe", "taskyard.roles")
# Named by the issue: frameworks, drivers and the adapters' libraries.
FORBIDDEN = (
    "fastapi",
    "starlette",
    "sqlalchemy",
    "jwt",
    "aiohttp",
    "httpx",
    "pydantic_settings",
    "limits",
    "prometheus_client",
)

# Runs in the child: the modules that importing the whole domain added to `sys.modules`.
PROBE = """
import json, pkgutil, importlib, sys
before = set(sys.modules)
import taskyard.domain
names = [m.name for m in pkgutil.walk_packages(taskyard.domain.__path__, "taskyard.domain.")]
for name in names:
    importlib.import_module(name)
print(json.dumps({"domain": names, "loaded": sorted(set(sys.modules) - before)}))
"""


def loaded_by_the_domain() -> tuple[list[str], list[str]]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    found = json.loads(out)
    return found["domain"], found["loaded"]


def allowed(module: str) -> bool:
    """The standard library, the domain, the package itself (its `__init__`) and the leaves."""
    if module.partition(".")[0] in sys.stdlib_module_names:
        return True
    in_domain = module == "taskyard.domain" or module.startswith("taskyard.domain.")
    return in_domain or module in ("taskyard", *ALLOWED_LEAVES)


def test_importing_the_domain_loads_no_framework_driver_or_adapter() -> None:
    domain, loaded = loaded_by_the_domain()
    assert "taskyard.domain.models" in domain and len(domain) > 10  # it saw the modules
    assert [m for m in loaded if m.partition(".")[0] in FORBIDDEN] == []
    assert [m for m in loaded if not allowed(m)] == []
