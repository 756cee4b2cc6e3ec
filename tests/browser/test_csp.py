"""The API docs under their strict Content Security Policy, in a real browser (issue 10, item
1): Swagger UI and ReDoc load their offline assets and render, and the browser reports no
violation (an inline script without its hash, an outside fetch)."""

from __future__ import annotations

from playwright.sync_api import Browser, expect

from tests.browser.conftest import Yard, open_tab


def test_swagger_ui_renders_under_its_policy(browser: Browser, yard: Yard) -> None:
    with open_tab(browser, yard.node.url) as tab:
        response = tab.page.goto(f"{yard.node.url}/docs")
        assert response is not None
        policy = response.headers["content-security-policy"]
        assert "'unsafe-inline'" not in policy.split("script-src")[1].split(";")[0]
        expect(tab.page.locator(".opblock").first).to_be_visible()  # operations listed
        expect(tab.page.get_by_text("/api/task/{task_id}").first).to_be_visible()
        tab.screenshot("docs-swagger")
        tab.assert_no_errors()


def test_redoc_renders_under_its_policy(browser: Browser, yard: Yard) -> None:
    with open_tab(browser, yard.node.url) as tab:
        tab.page.goto(f"{yard.node.url}/redoc")
        expect(tab.page.locator("h1").first).to_contain_text("taskyard")
        expect(tab.page.get_by_text("/api/task/{task_id}").first).to_be_attached()
        tab.screenshot("docs-redoc")
        # ReDoc's sidebar links a logo from cdn.redoc.ly: the policy blocks that outside load,
        # as it should (nothing is fetched from outside). Any other violation is an error.
        outside = [e for e in tab.console.errors if "https://cdn.redoc.ly/" in e and "img-src" in e]
        assert len(outside) <= 1, outside
        assert [e for e in tab.console.errors if e not in outside] == []
