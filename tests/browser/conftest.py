"""The dashboard in a real browser: Debian's chromium driven by Playwright, against one taskyard
node (SQLite) and two mock backends, shared by every test of this folder."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright

from tests.support import REPO, MockBackend, Taskyard, start_taskyard, token, wait_for

SCREENSHOTS = REPO / "tests" / "artifacts" / "screenshots"
GOOD_MODEL = "upscale"  # served by gpu-a, which answers
FLAKY_MODEL = "caption"  # served by gpu-b, which answers HTTP 500
UNSERVED_MODEL = "upscaler-typo"  # served by nobody
FINISHED = 6

FETCH_4XX = "Failed to load resource: the server responded with a status of 4"

expect.set_options(timeout=20_000)  # a loaded machine; every wait is on an event, not a sleep


def chromium_path() -> str:
    """Debian's chromium (never a Playwright browser download)."""
    found = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(found).exists():
        message = "chromium is not installed: apt-get install -y chromium"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message} (CI=true: the browser tests must run)")
        pytest.skip(f"SKIPPING BROWSER TESTS: {message}")
    return found


@dataclass
class Yard:
    """The node, its backends, and the tasks the tests look for."""

    node: Taskyard
    good: MockBackend
    flaky: MockBackend
    admin_token: str
    failed_task: str
    waiting_task: str
    finished_tasks: list[str] = field(default_factory=list)


@pytest.fixture(scope="package")
def yard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Yard]:
    workdir = tmp_path_factory.mktemp("dashboard")
    good = MockBackend("gpu-a", workdir=workdir)
    flaky = MockBackend("gpu-b", workdir=workdir)
    node = start_taskyard(workdir)
    try:
        good.start("/health")
        flaky.start("/health")
        node.register_online(good, models=[GOOD_MODEL], name="gpu-a")
        node.register_online(flaky, models=[FLAKY_MODEL], name="gpu-b", max_concurrency=2)
        flaky.control(fail_status=500)

        finished = [node.submit({"model": GOOD_MODEL, "n": i}) for i in range(FINISHED)]
        failed = node.submit({"model": FLAKY_MODEL, "image": "cat.png"}, max_attempts=2)
        waiting = node.submit({"model": UNSERVED_MODEL})
        cancelled = node.submit({"model": UNSERVED_MODEL})
        assert node.admin.post(f"/api/task/{cancelled}/cancel").status_code == 200
        for task_id in finished:
            node.wait_status(task_id, "FINISHED")
        node.wait_status(failed, "FAILED")
        # the failed predicts took gpu-b out of rotation; its next health check brings it back
        wait_for(lambda: (node.server("gpu-b") or {})["status"] == "online", what="gpu-b online")
        yield Yard(
            node=node,
            good=good,
            flaky=flaky,
            admin_token=token(["admin"], "operator"),
            failed_task=failed,
            waiting_task=waiting,
            finished_tasks=finished,
        )
    finally:
        node.stop()
        node.admin.close()
        good.stop()
        flaky.stop()


@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    executable = chromium_path()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable)
        try:
            yield browser
        finally:
            browser.close()


class Console:
    """What the page reported: script errors and console errors (CSP violations among them)."""

    def __init__(self, page: Page) -> None:
        self.errors: list[str] = []
        page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))
        page.on("console", self._console)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type != "error":
            return
        # Chromium logs every 4xx answer to fetch(); the tests provoke 401 and 403 on purpose.
        if message.text.startswith(FETCH_4XX):
            return
        self.errors.append(message.text)


@dataclass
class Tab:
    page: Page
    console: Console
    base: str

    def open(self, route: str = "") -> None:
        self.page.goto(f"{self.base}/dashboard/{route}")

    def sign_in(self, tok: str) -> None:
        self.page.fill("#token", tok)
        self.page.click("#login-submit")

    def screenshot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def assert_no_errors(self) -> None:
        assert not self.console.errors, self.console.errors


@contextlib.contextmanager
def open_tab(browser: Browser, base: str) -> Iterator[Tab]:
    """A fresh tab (its own session storage) on the node at `base`."""
    context = browser.new_context(viewport={"width": 1440, "height": 900}, locale="en-GB")
    page = context.new_page()
    try:
        yield Tab(page=page, console=Console(page), base=base)
    finally:
        context.close()


@pytest.fixture
def tab(browser: Browser, yard: Yard) -> Iterator[Tab]:
    """A fresh tab (its own session storage) on the dashboard's node."""
    with open_tab(browser, yard.node.url) as fresh:
        yield fresh
