"""The dashboard's actions in chromium, on a node of their own (so the counts the other browser
tests check stay as they are): retry and cancel on a task's page, retry and cancel everything a
search matches, maintenance from a server's page, and the ejected, draining and maintenance
states with their reasons."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from playwright.sync_api import Browser, Route, expect

from tests.browser.conftest import Tab, open_tab
from tests.support import MockBackend, Taskyard, start_taskyard, token, wait_for

PICKY_MODELS = ["resize", "crop"]  # served by "picky" alone, which the tests make answer 400
STEADY_MODEL = "denoise"  # served by "steady", put in maintenance by a test
SHAKY_MODEL = "segment"  # served by "shaky", which a test makes answer 500 until ejected
GHOST_MODEL = "ghost"  # served by nobody: its tasks wait
BULK_TASKS = 103  # more than one bulk step (100), so the bar offers to go on


@dataclass
class Deck:
    node: Taskyard
    picky: MockBackend
    steady: MockBackend
    shaky: MockBackend
    admin_token: str


@pytest.fixture(scope="module")
def deck(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deck]:
    workdir = tmp_path_factory.mktemp("dashboard-actions")
    backends = [MockBackend(name, workdir=workdir) for name in ("picky", "steady", "shaky")]
    picky, steady, shaky = backends
    # A lone server may be ejected (share 1), for failing only: the 400s of "picky" fail its
    # tasks at once (the only server refused them) without taking it out of rotation.
    node = start_taskyard(
        workdir, eject_max_share=1, eject_after_rejections=100_000, task_timeout_s=60
    )
    try:
        for backend in backends:
            backend.start("/health")
        node.register_online(picky, models=PICKY_MODELS, name="picky")
        node.register_online(steady, models=[STEADY_MODEL], name="steady")
        node.register_online(shaky, models=[SHAKY_MODEL], name="shaky")
        yield Deck(node, picky, steady, shaky, token(["admin"], "operator"))
    finally:
        node.stop()
        node.admin.close()
        for backend in backends:
            backend.stop()


@pytest.fixture
def tab(browser: Browser, deck: Deck) -> Iterator[Tab]:
    with open_tab(browser, deck.node.url) as fresh:
        yield fresh


def _failed_by_400(deck: Deck, model: str, count: int) -> list[str]:
    """`count` tasks of `model` that FAILED because picky refused them; picky answers again."""
    deck.picky.control(fail_status=400)
    try:
        ids = [deck.node.submit({"model": model, "n": i}) for i in range(count)]
        for task_id in ids:
            assert deck.node.wait_status(task_id, "FAILED", "FINISHED")["status"] == "FAILED"
    finally:
        deck.picky.control(fail_status=None)
    return ids


def test_retry_a_failed_task_from_its_page(tab: Tab, deck: Deck) -> None:
    """A FAILED task's page offers Retry (not Cancel); it goes back to the queue with the same
    id and finishes, its refused attempt still listed; a Retry the API refuses (409, the page
    showing a stale FAILED) shows the API's error."""
    (task_id,) = _failed_by_400(deck, "resize", 1)
    tab.open(f"#/tasks/{task_id}")
    tab.sign_in(deck.admin_token)
    page = tab.page
    head = page.locator("#view .page-head")
    expect(head.locator(".badge")).to_have_text("FAILED")
    expect(page.locator("#task-retry")).to_be_visible()
    expect(page.locator("#task-cancel")).to_have_count(0)
    tab.screenshot("task-failed-retry")

    page.click("#task-retry")
    expect(page.locator("#task-action-result .notice.ok")).to_contain_text("Retried")
    expect(head.locator(".badge")).to_have_text("FINISHED")
    expect(page.locator("#task-retry")).to_have_count(0)
    expect(page.locator("tr.attempt")).to_have_count(2)  # the refused one, and the one that ran
    expect(page.locator("tr.attempt[data-attempt='1'] .badge")).to_have_text("backend_rejected")
    tab.screenshot("task-retried-finished")
    task = deck.node.task(task_id)
    assert task["status"] == "FINISHED"
    assert [a["errorCode"] for a in task["attempts"]] == ["backend_rejected", None]

    # The page thinks the task is still FAILED: the API says no, and the page says why.
    refused = deck.node.admin.post(f"/api/task/{task_id}/retry")
    assert refused.status_code == 409
    stale = deck.node.admin.get(f"/api/task/{task_id}").json()
    stale["taskDetails"] |= {"status": "FAILED", "errorCode": "backend_rejected", "error": "x"}

    def serve_stale(route: Route) -> None:
        if route.request.method == "GET":
            route.fulfill(status=200, content_type="application/json", body=json.dumps(stale))
        else:
            route.fallback()

    pattern = re.compile(rf"/api/task/{task_id}$")
    page.route(pattern, serve_stale)
    page.reload()
    page.click("#task-retry")
    error = page.locator("#task-action-result .notice.error")
    expect(error).to_have_text(f"Retry failed: {refused.json()['error']} (HTTP 409)")
    expect(page.locator("#task-retry")).to_be_enabled()  # back, to try again
    tab.screenshot("task-retry-409")
    page.unroute(pattern)
    assert deck.node.task(task_id)["status"] == "FINISHED"
    tab.assert_no_errors()


def test_cancel_a_waiting_task_from_its_page(tab: Tab, deck: Deck) -> None:
    """A WAITING task's page offers Cancel (not Retry); it turns CANCELLED, and then offers
    Retry, which puts it back in the queue."""
    task_id = deck.node.submit({"model": GHOST_MODEL})
    tab.open(f"#/tasks/{task_id}")
    tab.sign_in(deck.admin_token)
    page = tab.page
    head = page.locator("#view .page-head")
    expect(head.locator(".badge")).to_have_text("WAITING")
    expect(page.locator("#task-retry")).to_have_count(0)
    tab.screenshot("task-waiting-cancel")

    page.click("#task-cancel")
    expect(page.locator("#task-action-result .notice.ok")).to_have_text("Cancelled.")
    expect(head.locator(".badge")).to_have_text("CANCELLED")
    expect(page.locator("#task-cancel")).to_have_count(0)
    assert deck.node.task(task_id)["status"] == "CANCELLED"
    tab.screenshot("task-cancelled")

    page.click("#task-retry")
    expect(head.locator(".badge")).to_have_text("WAITING")
    assert deck.node.task(task_id)["status"] == "WAITING"
    assert deck.node.admin.post(f"/api/task/{task_id}/cancel").status_code == 200
    tab.assert_no_errors()


def test_bulk_retry_of_a_filtered_list_goes_on_while_more_match(tab: Tab, deck: Deck) -> None:
    """On the search for FAILED tasks of one model, "Retry all matching" asks first (Back
    changes nothing), then retries 100 and says more match; going on retries the rest, and
    every one of them finishes."""
    ids = _failed_by_400(deck, "crop", BULK_TASKS)
    tab.open("#/tasks?status=FAILED&model=crop")
    tab.sign_in(deck.admin_token)
    page = tab.page
    rows = page.locator("#task-results tbody tr[data-task-id]")
    expect(rows).to_have_count(50)  # the first page
    expect(page.locator("#bulk-cancel")).to_be_disabled()  # FAILED is no status to cancel

    page.click("#bulk-retry")
    confirm = page.locator("#bulk-actions .notice.warn")
    expect(confirm).to_contain_text("Retry every FAILED task matching status FAILED · model crop?")
    tab.screenshot("bulk-retry-confirm")
    page.click("#bulk-back")
    expect(page.locator("#bulk-retry")).to_be_visible()
    assert all(deck.node.task(task_id)["status"] == "FAILED" for task_id in ids[:3])

    page.click("#bulk-retry")
    page.click("#bulk-confirm")
    result = page.locator("#bulk-result")
    expect(result).to_have_text("100 retried; more tasks match.")
    tab.screenshot("bulk-retry-more")
    page.click("#bulk-continue")
    expect(result).to_have_text(f"{BULK_TASKS - 100} retried ({BULK_TASKS} in all).")
    expect(page.locator("#bulk-retry")).to_be_visible()  # back to the start
    expect(page.locator("#task-results td.empty")).to_have_text("No task matches these filters.")
    tab.screenshot("bulk-retry-done")

    for task_id in ids:
        assert deck.node.wait_status(task_id, "FINISHED", "FAILED")["status"] == "FINISHED"
    page.goto(f"{tab.base}/dashboard/#/tasks?status=FINISHED&model=crop&limit=200")
    expect(rows).to_have_count(BULK_TASKS)
    assert {row.get_attribute("data-task-id") for row in rows.all()} == set(ids)
    tab.assert_no_errors()


def test_bulk_cancel_of_waiting_tasks(tab: Tab, deck: Deck) -> None:
    """The bulk "Cancel all matching" on the search for a model nobody serves cancels its tasks
    after the confirmation, and says how many; a refusal (403) is shown as the API words it,
    without signing out."""
    ids = [deck.node.submit({"model": f"{GHOST_MODEL}-bulk"}) for _ in range(3)]
    tab.open(f"#/tasks?model={GHOST_MODEL}-bulk")
    tab.sign_in(deck.admin_token)
    page = tab.page
    expect(page.locator("#task-results tbody tr[data-status=WAITING]")).to_have_count(3)

    # The dashboard only lets admins in, so this 403 comes from a stand-in for the API.
    refusal = {"error": "Only an admin may retry or cancel tasks in bulk"}
    pattern = re.compile(r"/api/tasks/cancel\?")
    page.route(pattern, lambda route: route.fulfill(status=403, json=refusal))
    page.click("#bulk-cancel")
    page.click("#bulk-confirm")
    expect(page.locator("#bulk-actions .notice.error")).to_have_text(
        f"Cancel failed: {refusal['error']} (HTTP 403)"
    )
    expect(page.locator("#login")).to_be_hidden()
    page.unroute(pattern)
    assert {deck.node.task(task_id)["status"] for task_id in ids} == {"WAITING"}

    page.click("#bulk-cancel")
    expect(page.locator("#bulk-actions .notice.warn")).to_contain_text(
        f"Cancel every WAITING or PROCESSING task matching model {GHOST_MODEL}-bulk?"
    )
    page.click("#bulk-confirm")
    expect(page.locator("#bulk-result")).to_have_text("3 cancelled.")
    expect(page.locator("#task-results tbody tr[data-status=CANCELLED]")).to_have_count(3)
    assert {deck.node.task(task_id)["status"] for task_id in ids} == {"CANCELLED"}
    tab.assert_no_errors()


def test_maintenance_from_the_server_page(tab: Tab, deck: Deck) -> None:
    """An admin puts a server with a running task in maintenance, with a reason: it shows
    draining, then maintenance once the task is done (the API says the same), and its new tasks
    wait; the Servers table shows the state and reason; ending maintenance brings it back."""
    deck.steady.control(hang=True)
    running = deck.node.submit({"model": STEADY_MODEL})
    deck.node.wait_status(running, "PROCESSING")
    tab.open("#/servers/steady")
    tab.sign_in(deck.admin_token)
    page = tab.page
    badge = page.locator("#view .page-head .badge")
    expect(badge).to_have_text("online")
    expect(page.locator("#maintenance-off")).to_be_hidden()

    page.fill("#maintenance-reason", "driver update")
    page.click("#maintenance-on")
    expect(page.locator("#maintenance-result .notice.ok")).to_contain_text("In maintenance")
    expect(badge).to_have_text("draining")
    expect(page.locator("#view .notice.warn")).to_contain_text("Draining: driver update")
    server = deck.node.server("steady") or {}
    assert server["state"] == "draining"
    assert server["maintenance"]["enabled"] is True
    assert server["maintenance"]["reason"] == "driver update"
    tab.screenshot("server-draining")

    deck.steady.control(hang=False)
    deck.node.wait_status(running, "FINISHED")
    expect(badge).to_have_text("maintenance")
    expect(page.locator("#view .notice.maint")).to_contain_text("Maintenance: driver update")
    status = page.locator("#maintenance-status")
    expect(status).to_contain_text(re.compile(r"^In maintenance since \d\d:\d\d:\d\d"))
    expect(status).to_contain_text(": driver update. No new tasks go to it.")
    expect(page.locator("#maintenance-on")).to_be_hidden()
    assert (deck.node.server("steady") or {})["state"] == "maintenance"
    waiting = deck.node.submit({"model": STEADY_MODEL})
    assert deck.node.task(waiting)["status"] == "WAITING"
    tab.screenshot("server-maintenance")

    page.click("#nav a[data-page=servers]")
    row = page.locator("tr[data-server-id='steady']")
    expect(row).to_have_attribute("data-state", "maintenance")
    expect(row.locator(".badge")).to_have_text("maintenance")
    expect(row.locator(".reason")).to_have_text("in maintenance: driver update")
    tab.screenshot("servers-maintenance")

    row.locator("a").first.click()
    page.click("#maintenance-off")
    expect(page.locator("#maintenance-result .notice.ok")).to_contain_text("Maintenance ended")
    expect(badge).to_have_text("online")
    assert (deck.node.server("steady") or {})["state"] == "online"
    deck.node.wait_status(waiting, "FINISHED")
    tab.assert_no_errors()


def test_ejected_server_shows_why(tab: Tab, deck: Deck) -> None:
    """A server whose dispatches keep failing (HTTP 500) while its health checks pass shows
    ejected, with the ejection's reason and its last error, in the table and on its page."""
    deck.shaky.control(fail_status=500)
    try:
        task_id = deck.node.submit({"model": SHAKY_MODEL}, max_attempts=3)
        deck.node.wait_status(task_id, "FAILED")
        server = wait_for(
            lambda: (s := deck.node.server("shaky")) and s["state"] == "ejected" and s,
            what="shaky ejected",
        )
    finally:
        deck.shaky.control(fail_status=None)
    health = server["health"]
    assert health["ejectionReason"] == "failing" and health["lastError"]

    tab.open("#/servers")
    tab.sign_in(deck.admin_token)
    page = tab.page
    row = page.locator("tr[data-server-id='shaky']")
    expect(row).to_have_attribute("data-state", "ejected")
    expect(row.locator(".badge")).to_have_text("ejected")
    expect(row.locator(".reason")).to_contain_text(health["lastError"])  # it names the ejection
    expect(row.locator(".reason")).to_contain_text("(until ")
    tab.screenshot("servers-ejected")

    row.locator("a").first.click()
    notice = page.locator("#view .notice.error")
    expect(notice).to_contain_text(f"Out of rotation: {health['lastError']} (until ")
    expect(page.locator(".facts").nth(1)).to_contain_text("yes, for failing dispatches")
    tab.screenshot("server-ejected")
    tab.assert_no_errors()
