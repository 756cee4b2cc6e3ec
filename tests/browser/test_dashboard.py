"""The dashboard as an operator uses it, in chromium: sign in, watch a server go offline, find a
failed task by filter and read its attempts, and be told clearly when a token is refused."""

from __future__ import annotations

import re

from playwright.sync_api import expect

from tests.browser.conftest import FINISHED, FLAKY_MODEL, UNSERVED_MODEL, Tab, Yard
from tests.support import token

TOKEN_KEY = "taskyard.dashboard.token"


def _stored(tab: Tab) -> dict[str, object]:
    """The token in this tab's sessionStorage, and how many localStorage entries exist."""
    stored: dict[str, object] = tab.page.evaluate(
        "(key) => ({session: sessionStorage.getItem(key), local: localStorage.length})",
        TOKEN_KEY,
    )
    return stored


def test_wrong_token_is_rejected_with_the_reason(tab: Tab, yard: Yard) -> None:
    """A token taskyard refuses (not a JWT, or one without role admin) shows "token rejected"
    with the API's own error, stays on the sign-in box and is not kept."""
    tab.open()
    page = tab.page
    expect(page.locator("#login")).to_be_visible()

    tab.sign_in(token(["user"], "mallory"))
    error = page.locator("#login-error")
    expect(error).to_have_text("token rejected: This route needs role `admin`")

    tab.sign_in("not-a-token")
    expect(error).to_have_text("token rejected: Invalid token")
    expect(page.locator("#login")).to_be_visible()
    expect(page.locator("#nav")).to_be_hidden()
    assert _stored(tab) == {"session": None, "local": 0}
    tab.screenshot("wrong-token")
    tab.assert_no_errors()


def test_sign_in_keeps_the_token_in_session_storage_only(tab: Tab, yard: Yard) -> None:
    """The admin token goes to sessionStorage (not the URL, not localStorage), survives a reload
    of the tab, and "Log out" forgets it."""
    tab.open()
    tab.sign_in(yard.admin_token)
    page = tab.page
    expect(page.locator("#status-counts")).to_be_visible()
    assert _stored(tab) == {"session": yard.admin_token, "local": 0}
    for route in ("#/servers", "#/tasks?status=FAILED", f"#/tasks/{yard.failed_task}"):
        page.goto(f"{tab.base}/dashboard/{route}")
        expect(page.locator("#view h1")).to_be_visible()
        assert yard.admin_token not in page.url
    page.reload()
    expect(page.locator("#view h1")).to_have_text(yard.failed_task)

    page.click("#logout")
    expect(page.locator("#login")).to_be_visible()
    expect(page.locator("#view")).to_be_empty()
    assert _stored(tab) == {"session": None, "local": 0}
    tab.assert_no_errors()


def test_overview_counts_queue_and_charts(tab: Tab, yard: Yard) -> None:
    """The overview counts tasks by status, names the model nobody serves, and charts the last
    hour and the last day."""
    tab.open()
    tab.sign_in(yard.admin_token)
    page = tab.page
    counts = page.locator("#status-counts")
    expect(counts.locator("[data-status=FINISHED] .tile-value")).to_have_text(str(FINISHED))
    expect(counts.locator("[data-status=FAILED] .tile-value")).to_have_text("1")
    expect(counts.locator("[data-status=WAITING] .tile-value")).to_have_text("1")
    expect(counts.locator("[data-status=CANCELLED] .tile-value")).to_have_text("1")
    expect(page.locator("#view .notice.warn")).to_contain_text(UNSERVED_MODEL)
    expect(page.locator("#server-counts .big-online .big-value")).to_have_text("2")
    expect(page.locator(".queue-table")).to_contain_text(UNSERVED_MODEL)
    # three charts; this minute's bars are drawn (finished and failed)
    expect(page.locator("svg.chart")).to_have_count(3)
    expect(page.locator("svg.chart").first.locator("rect.bar.s-finished")).not_to_have_count(0)
    expect(page.locator("svg.chart").first.locator("rect.bar.s-failed")).not_to_have_count(0)
    tab.screenshot("overview")

    page.click("#status-counts [data-status=FAILED]")  # a tile opens the search
    expect(page.locator(f"tr[data-task-id='{yard.failed_task}']")).to_be_visible()
    tab.assert_no_errors()


def test_server_going_offline_shows_with_its_reason(tab: Tab, yard: Yard) -> None:
    """With the Servers page open, a backend that stops answering turns offline in the table,
    with the failed health check as the reason, without reloading the page. (gpu-b stays
    down for the tests after this one.)"""
    tab.open("#/servers")
    tab.sign_in(yard.admin_token)
    page = tab.page
    row = page.locator("tr[data-server-id='gpu-b']")
    expect(row).to_have_attribute("data-state", "online")
    expect(row).to_contain_text("2 failed")  # its two attempts of the failed task
    expect(page.locator("tr[data-server-id='gpu-a']")).to_have_attribute("data-state", "online")

    yard.flaky.stop()
    expect(row).to_have_attribute("data-state", "offline")
    last_error = (yard.node.server("gpu-b") or {})["health"]["lastError"]
    assert last_error and "health check" in last_error
    expect(row.locator(".reason")).to_have_text(last_error)  # the reason is the failed check
    expect(row.locator(".badge")).to_have_text("offline")
    expect(page.locator("tr[data-server-id='gpu-a']")).to_have_attribute("data-state", "online")
    tab.screenshot("servers-one-offline")

    page.click("tr[data-server-id='gpu-b'] a")  # the detail view
    expect(page.locator("#view .notice.error")).to_contain_text("Offline:")
    expect(page.locator(f"tr[data-task-id='{yard.failed_task}']")).to_have_count(2)
    tab.screenshot("server-detail")
    tab.assert_no_errors()


def test_failed_task_found_by_filter_and_its_attempts(tab: Tab, yard: Yard) -> None:
    """In Tasks, choosing status FAILED and error code backend_error finds the failed task (and
    only it); its detail lists both attempts with server, outcome and error."""
    tab.open("#/tasks")
    tab.sign_in(yard.admin_token)
    page = tab.page
    rows = page.locator("#task-results tbody tr[data-task-id]")
    expect(rows).to_have_count(FINISHED + 3)  # every task, newest first

    page.click("label.status-failed")
    page.fill("input[name=error_code]", "backend_error")
    page.click("#search")
    expect(page).to_have_url(re.compile(r"#/tasks\?status=FAILED&error_code=backend_error$"))
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-task-id", yard.failed_task)
    expect(rows.first.locator(".badge")).to_have_text("FAILED")
    expect(page.locator("input[name=status][value=FAILED]")).to_be_checked()
    tab.screenshot("tasks-filtered-failed")

    rows.first.locator("a").first.click()
    expect(page).to_have_url(re.compile(rf"#/tasks/{yard.failed_task}$"))
    expect(page.locator("#view .notice.error")).to_contain_text("backend_error")
    attempts = page.locator("tr.attempt")
    expect(attempts).to_have_count(2)
    for n in (1, 2):
        attempt = page.locator(f"tr.attempt[data-attempt='{n}']")
        expect(attempt).to_contain_text("gpu-b")
        expect(attempt.locator(".badge")).to_have_text("backend_error")
        expect(attempt).to_contain_text("500")
    expect(page.locator("pre.json").first).to_contain_text(FLAKY_MODEL)
    tab.screenshot("task-detail-attempts")
    tab.assert_no_errors()


def test_paging_follows_next_cursor_and_goes_back(tab: Tab, yard: Yard) -> None:
    """Pages of 4: Next follows nextCursor through every task once, newest first, until there
    is no next page; Previous returns to the page before."""
    tab.open("#/tasks?limit=4")
    tab.sign_in(yard.admin_token)
    page = tab.page
    rows = page.locator("#task-results tbody tr[data-task-id]")

    def ids() -> list[str]:
        return [row.get_attribute("data-task-id") or "" for row in rows.all()]

    pages: list[list[str]] = []
    for number, size in ((1, 4), (2, 4), (3, 1)):
        expect(page.locator("#page-info")).to_contain_text(f"Page {number}")
        expect(rows).to_have_count(size)
        pages.append(ids())
        if number == 1:
            tab.screenshot("tasks-page-1")
        if number < 3:
            page.click("#next-page")
    expect(page.locator("#next-page")).to_be_disabled()
    seen = [task_id for ids_ in pages for task_id in ids_]
    assert len(seen) == len(set(seen)) == FINISHED + 3
    assert seen.index(yard.waiting_task) < seen.index(yard.finished_tasks[0])  # newest first

    page.click("#prev-page")
    expect(page.locator("#page-info")).to_contain_text("Page 2")
    expect(rows.first).to_have_attribute("data-task-id", pages[1][0])
    assert ids() == pages[1]
    tab.assert_no_errors()


def test_waiting_task_says_why(tab: Tab, yard: Yard) -> None:
    """A WAITING task for a model no server serves says so in its detail."""
    tab.open(f"#/tasks?model={UNSERVED_MODEL}&status=WAITING")
    tab.sign_in(yard.admin_token)
    page = tab.page
    rows = page.locator("#task-results tbody tr[data-task-id]")
    expect(rows).to_have_count(1)
    rows.first.locator("a").first.click()
    waiting = page.locator("#view .notice.warn")
    expect(waiting).to_contain_text("No server serves this model")
    expect(waiting).to_contain_text(UNSERVED_MODEL)
    tab.screenshot("task-waiting")
    tab.assert_no_errors()
