"""Task search (`GET /api/tasks`, issue 8 item 1) through the API: the app in-process
(`tests.inprocess`) on a real SQLite file and a real PostgreSQL database (the search is their
SQL), in-process backends, tasks in every state. Every filter, keyset paging while tasks
are being created, owners kept apart, and bad values refused with a 400."""

from __future__ import annotations

import itertools
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import httpx
import pytest

from tests.inprocess import InProcessFleet, InProcessYard, shared_yard
from tests.support import wait_for

FINAL = ("FINISHED", "FAILED", "CANCELLED")
Task = dict[str, Any]


@pytest.fixture(scope="module")
def yard(db_kind: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessYard]:
    """One coordinator (FAST_ENV intervals) shared by this module's tests. A server that
    answers 500 stays in rotation (its failures are the point), so tasks fail without waiting
    for it to come back online. No rate limits: a test pages while one user creates hundreds
    of tasks a second, and the property tests read as fast as the node answers."""
    workdir = tmp_path_factory.mktemp(f"yard-{db_kind}")
    with shared_yard(
        db_kind,
        workdir,
        eject_after_failures=1000,
        eject_after_rejections=1000,
        rate_limit_creates="",  # one user makes hundreds of creates a second here
        rate_limit_requests="",  # ...and hundreds of searches (tests/api covers the limits)
    ) as node:
        yield node


def search(client: httpx.Client, **params: Any) -> httpx.Response:
    return client.get("/api/tasks", params={k: v for k, v in params.items() if v is not None})


def found(client: httpx.Client, **params: Any) -> list[Task]:
    """One page of a search that must succeed."""
    response = search(client, **params)
    assert response.status_code == 200, (params, response.text)
    body = response.json()
    assert set(body) == {"tasks", "nextCursor"}
    tasks: list[Task] = body["tasks"]
    return tasks


def every_page(
    client: httpx.Client, *, cursor: str | None = None, **params: Any
) -> list[list[Task]]:
    """Every page of a search (from `cursor`), following nextCursor to its end."""
    pages: list[list[Task]] = []
    while True:
        response = search(client, **params, cursor=cursor)
        assert response.status_code == 200, response.text
        body = response.json()
        pages.append(body["tasks"])
        cursor = body["nextCursor"]
        if cursor is None:
            return pages
        assert len(pages) < 100, "paging does not end"


def ids(tasks: list[Task]) -> list[str]:
    return [t["id"] for t in tasks]


def assert_newest_first(tasks: list[Task]) -> None:
    created = [t["createdAt"] for t in tasks]
    assert created == sorted(created, reverse=True), created


def create(client: httpx.Client, model: str, **params: Any) -> str:
    response = client.post("/api/task", json={"model": model}, params=params)
    assert response.status_code == 200, response.text
    task_id: str = response.json()["taskId"]
    return task_id


# ---- a world of tasks in every state, for two owners -----------------------------------------


@dataclass
class World:
    """Two users' tasks in every state; `tasks` is each one as an admin reads it, settled."""

    yard: InProcessYard
    owners: tuple[str, str]
    server_a: str  # serves model_a, finishes its tasks
    server_err: str  # serves model_err, answers 500 to every predict
    model_a: str
    model_err: str
    model_none: str  # no server serves it
    clients: dict[str, httpx.Client] = field(default_factory=dict)
    tasks: dict[str, Task] = field(default_factory=dict)  # id → task
    kind: dict[str, str] = field(default_factory=dict)  # id → what it was made to be

    def of(self, owner: str) -> list[Task]:
        return [t for t in self.tasks.values() if t["owner"] == owner]


@pytest.fixture(scope="module")
def world(yard: InProcessYard) -> Iterator[World]:
    tag = uuid.uuid4().hex[:8]
    fleet = InProcessFleet(yard)
    ok, err = fleet.mocks("ok", ("err", "--error-rate", "1"))
    w = World(
        yard=yard,
        owners=(f"alice-{tag}", f"bob-{tag}"),
        server_a=ok.server_id,
        server_err=err.server_id,
        model_a=f"model-a-{tag}",
        model_err=f"model-err-{tag}",
        model_none=f"model-none-{tag}",
    )
    fleet.register_online(ok, models=[w.model_a])
    fleet.register_online(err, models=[w.model_err])
    for owner in w.owners:
        w.clients[owner] = yard.client(["user"], owner)
    made: list[tuple[str, str]] = []
    # Interleaved, so that the owners' creation times alternate.
    for owner in w.owners * 2:
        client = w.clients[owner]
        made.append((create(client, w.model_a), "finished"))
        made.append((create(client, w.model_none), "waiting"))
        made.append((create(client, w.model_none, queue_timeout_s=0.2), "no_capacity"))
        made.append((create(client, w.model_err, max_attempts=1), "backend_error"))
        cancelled = create(client, w.model_none)
        response = client.post(f"/api/task/{cancelled}/cancel")
        assert response.status_code == 200, response.text
        made.append((cancelled, "cancelled"))
    expected = {
        "finished": ("FINISHED", None),
        "waiting": ("WAITING", None),
        "no_capacity": ("FAILED", "no_capacity_deadline"),
        "backend_error": ("FAILED", "backend_error"),
        "cancelled": ("CANCELLED", None),
    }
    for task_id, kind in made:
        status, code = expected[kind]
        task = yard.wait_status(task_id, status)
        assert task["errorCode"] == code, task
        w.tasks[task_id] = {
            k: v for k, v in task.items() if k not in ("request", "result", "waiting")
        }
        w.kind[task_id] = kind
    yield w
    fleet.close()
    for client in w.clients.values():
        client.close()


def matches(task: Task, params: dict[str, Any]) -> bool:
    """Whether `task` passes the search filters in `params` (the documented semantics)."""
    status = params.get("status")
    if status is not None and task["status"] not in status:
        return False
    for param, key in (
        ("model", "model"),
        ("server_id", "serverId"),
        ("owner", "owner"),
        ("error_code", "errorCode"),
    ):
        if params.get(param) is not None and task[key] != params[param]:
            return False
    after, before = params.get("created_after"), params.get("created_before")
    if after is not None and not task["createdAt"] > after:
        return False
    return before is None or task["createdAt"] < before


def assert_search(client: httpx.Client, universe: list[Task], **params: Any) -> list[Task]:
    """The search answers exactly the tasks of `universe` that match, newest first, each as
    it is stored (the summary: no request, no result)."""
    got = found(client, limit=500, **params)
    want = {t["id"] for t in universe if matches(t, params)}
    assert set(ids(got)) == want, params
    assert len(got) == len(want), f"repeats in {params}"
    assert_newest_first(got)
    return got


def test_each_filter_alone(world: World) -> None:
    """Each filter on its own, as a user (whose own tasks are the whole answer)."""
    alice = world.owners[0]
    client, mine = world.clients[alice], world.of(alice)
    assert len(mine) == 10
    cases: list[dict[str, Any]] = [
        {},
        {"status": ["WAITING"]},
        {"status": ["FINISHED"]},
        {"status": ["FAILED"]},
        {"status": ["CANCELLED"]},
        {"status": ["PROCESSING"]},
        {"status": ["WAITING", "CANCELLED"]},  # repeatable: any of them
        {"status": ["FINISHED", "FAILED", "CANCELLED"]},
        {"status": ["FAILED", "FAILED"]},
        {"model": world.model_a},
        {"model": world.model_none},
        {"model": "no-such-model"},
        {"server_id": world.server_a},
        {"server_id": world.server_err},
        {"server_id": "no-such-server"},
        {"owner": alice},  # a user may name itself
        {"error_code": "backend_error"},
        {"error_code": "no_capacity_deadline"},
        {"error_code": "timeout"},
    ]
    created = sorted(t["createdAt"] for t in mine)
    middle = created[len(created) // 2]
    cases += [
        {"created_after": middle},  # exclusive
        {"created_before": middle},  # exclusive
        {"created_after": created[0] - 1},
        {"created_before": created[-1] + 1},
        {"created_after": created[-1]},  # nothing newer than the newest
        {"created_after": created[0], "created_before": created[-1]},
    ]
    for params in cases:
        assert_search(client, mine, **params)

    # Spot checks that the filters select what they are named for.
    (waiting_a, waiting_b) = found(client, status="WAITING")
    assert {waiting_a["id"], waiting_b["id"]} == {
        i for i, k in world.kind.items() if k == "waiting" and world.tasks[i]["owner"] == alice
    }
    for task in found(client, server_id=world.server_err):
        assert task["errorCode"] == "backend_error" and task["status"] == "FAILED"
    for task in found(client, error_code="no_capacity_deadline"):
        assert task["serverId"] is None and task["attempts"] == []
    assert len(found(client, created_after=middle)) == sum(1 for c in created if c > middle)
    assert len(found(client, created_before=middle)) == sum(1 for c in created if c < middle)


def test_summaries_carry_no_request_or_result(world: World) -> None:
    """A search result is a task without its request and result, otherwise as stored."""
    client = world.clients[world.owners[0]]
    for task in found(client):
        assert "request" not in task and "result" not in task and "waiting" not in task
        assert task == world.tasks[task["id"]]


def test_admin_filters_and_owner(world: World) -> None:
    """An admin sees every owner's tasks, `owner` narrows to one; the other filters work
    across owners."""
    admin = world.yard.admin
    everyone = list(world.tasks.values())
    alice, bob = world.owners
    assert_search(admin, everyone, model=world.model_a)  # both owners' tasks
    assert {t["owner"] for t in found(admin, model=world.model_a)} == {alice, bob}
    assert_search(admin, everyone, model=world.model_none, owner=bob)
    assert_search(admin, everyone, owner=alice)
    assert_search(admin, everyone, owner=bob, status=["FAILED"])
    assert_search(admin, everyone, server_id=world.server_a)
    assert_search(admin, everyone, server_id=world.server_err, owner=alice)
    assert_search(admin, everyone, owner="nobody-at-all")
    # Filters that other tests' tasks may match too: all of ours, and only matching ones.
    for params in (
        {"error_code": "backend_error"},
        {"error_code": "no_capacity_deadline"},
        {"status": ["CANCELLED"]},
        {"status": ["WAITING", "FINISHED"]},
    ):
        got = found(admin, limit=500, **params)
        assert all(matches(t, params) for t in got), params
        assert {t["id"] for t in everyone if matches(t, params)} <= set(ids(got)), params


def test_user_sees_only_own_tasks_through_any_filter(world: World) -> None:
    """Whatever the filters, a user's search answers only its own tasks (exactly those that
    match); naming another owner is 403; a tampered cursor leaks nothing either."""
    alice, bob = world.owners
    statuses: list[list[str] | None] = [None, ["WAITING"], ["FINISHED", "FAILED"], ["CANCELLED"]]
    models: list[str | None] = [None, world.model_a, world.model_err, world.model_none]
    server_ids: list[str | None] = [None, world.server_a, world.server_err]
    codes: list[str | None] = [None, "backend_error", "no_capacity_deadline"]
    first = min(t["createdAt"] for t in world.tasks.values())
    windows: list[tuple[int | None, int | None]] = [(None, None), (first, None)]
    for owner in (alice, bob):
        client, mine = world.clients[owner], world.of(owner)
        for status, model, server_id, code, (after, before) in itertools.product(
            statuses, models, server_ids, codes, windows
        ):
            got = assert_search(
                client,
                mine,
                status=status,
                model=model,
                server_id=server_id,
                error_code=code,
                created_after=after,
                created_before=before,
            )
            assert {t["owner"] for t in got} <= {owner}

    for owner, other in ((alice, bob), (bob, alice)):
        client = world.clients[owner]
        for params in ({"owner": other}, {"owner": other, "model": world.model_a}):
            response = search(client, **params)
            assert response.status_code == 403, response.text
            assert "error" in response.json()

    # A cursor is opaque but not signed: one made up, or pointing at someone else's task,
    # only moves the page, within the caller's own tasks.
    bobs_newest = max(world.of(bob), key=lambda t: (t["createdAt"], t["id"]))
    for forged in (
        encode_cursor(bobs_newest["createdAt"], bobs_newest["id"]),
        encode_cursor(bobs_newest["createdAt"] + 1, bobs_newest["id"]),
        encode_cursor(999_999_999_999_999, "zzz"),
    ):
        got = found(world.clients[alice], cursor=forged, limit=500)
        assert {t["owner"] for t in got} == {alice}
        assert set(ids(got)) == {t["id"] for t in world.of(alice)}, forged
    assert found(world.clients[alice], cursor=encode_cursor(0, "0")) == []

    # Someone else's task is not even readable one by one.
    response = world.clients[alice].get(f"/api/task/{bobs_newest['id']}")
    assert response.status_code == 404


def test_search_needs_a_user_or_admin(world: World) -> None:
    """No token → 401; a service token (a backend's) → 403."""
    response = world.yard.http.get(world.yard.url + "/api/tasks")
    assert response.status_code == 401
    service = world.yard.client(["service"], "srv")
    with service:
        assert search(service).status_code == 403


def test_limit_and_cursor_walk_pages(world: World) -> None:
    """`limit` bounds each page; `nextCursor` walks the rest, null on the last page."""
    alice = world.owners[0]
    client, mine = world.clients[alice], world.of(alice)
    for limit in (1, 3, 4, 10, 11):
        pages = every_page(client, limit=limit)
        assert all(len(p) == limit for p in pages[:-1])
        assert 0 < len(pages[-1]) <= limit or (len(pages) == 1 and not pages[0])
        seen = [t for p in pages for t in p]
        assert len(seen) == len(mine) and set(ids(seen)) == {t["id"] for t in mine}, limit
        assert_newest_first(seen)
    # Exactly one page when it fits, and the cursor is null.
    response = search(client, limit=10)
    assert response.json()["nextCursor"] is None
    # A cursor carries position only: combined with filters, it keeps filtering.
    first = search(client, limit=1, model=world.model_none).json()
    rest = every_page(client, limit=2, model=world.model_none, cursor=first["nextCursor"])
    walked = first["tasks"] + [t for p in rest for t in p]
    assert set(ids(walked)) == {t["id"] for t in mine if t["model"] == world.model_none}
    assert len(walked) == len(set(ids(walked)))


# ---- paging through 250 tasks while more are created ----------------------------------------


def more_than(items: list[str], n: int) -> bool:
    return len(items) > n


def test_paging_through_250_tasks_while_tasks_are_created(yard: InProcessYard) -> None:
    """Walking 250 tasks 50 at a time while the same owner keeps creating tasks that match
    the same filters: every one of the 250 is seen exactly once, pages never repeat, and only
    tasks created meanwhile can appear besides them."""
    owner = f"pager-{uuid.uuid4().hex[:8]}"
    model = f"model-pager-{owner}"

    def make(n: int) -> list[str]:
        with yard.client(["user"], owner) as client:
            return [create(client, model) for _ in range(n)]

    with ThreadPoolExecutor(max_workers=5) as pool:
        originals = {i for batch in pool.map(make, [50] * 5) for i in batch}
    assert len(originals) == 250

    created_meanwhile: list[str] = []
    stop = threading.Event()

    def keep_creating() -> None:
        with yard.client(["user"], owner) as client:
            while not stop.is_set():
                created_meanwhile.append(create(client, model))

    creator = threading.Thread(target=keep_creating, daemon=True)
    creator.start()
    pages: list[list[Task]] = []
    try:
        wait_for(lambda: len(created_meanwhile) >= 3, what="the creator to be under way")
        with yard.client(["user"], owner) as client:
            cursor = None
            while True:
                before = len(created_meanwhile)
                body = search(client, model=model, status="WAITING", limit=50, cursor=cursor)
                assert body.status_code == 200, body.text
                page = body.json()
                pages.append(page["tasks"])
                cursor = page["nextCursor"]
                if cursor is None:
                    break
                # Let new tasks land between every two pages.
                wait_for(partial(more_than, created_meanwhile, before + 2), what="more creates")
                assert len(pages) < 20, "paging does not end"
    finally:
        stop.set()
        creator.join(10)
    assert not creator.is_alive()

    seen = [t["id"] for page in pages for t in page]
    assert all(len(page) == 50 for page in pages[:-1]), [len(p) for p in pages]
    assert len(seen) == len(set(seen)), "a task was on two pages"
    assert originals <= set(seen), f"{len(originals - set(seen))} tasks were skipped"
    assert set(seen) - originals <= set(created_meanwhile)
    assert len(created_meanwhile) > 10
    everything = [t for page in pages for t in page]
    assert_newest_first(everything)
    assert {t["owner"] for t in everything} == {owner}

    # Walked again once the creates stopped, it is every task, once, newest first.
    with yard.client(["user"], owner) as client:
        again = [t for p in every_page(client, limit=50) for t in p]
        default = search(client).json()
    assert len(again) == 250 + len(created_meanwhile) == len({t["id"] for t in again})
    assert {t["id"] for t in again} == originals | set(created_meanwhile)
    assert_newest_first(again)
    assert len(default["tasks"]) == 50 and default["nextCursor"] is not None  # default limit
    assert ids(default["tasks"]) == ids(again[:50])
    assert len(found(yard.admin, owner=owner, limit=500)) == len(again)  # the maximum limit


# ---- bad values ----------------------------------------------------------------------------


def encode_cursor(created_at: int, task_id: str) -> str:
    """A cursor as nextCursor spells it: `<created_at>.<id>` of the last task seen."""
    return f"{created_at}.{task_id}"


def test_bad_values_are_400_and_change_nothing(yard: InProcessYard, world: World) -> None:
    """Every malformed filter, limit or cursor is a 400 naming the problem, never a 500 and
    never a partial answer; the stored tasks are as before."""
    admin = yard.admin
    real = search(admin, limit=1, owner=world.owners[0]).json()["nextCursor"]
    assert real is not None
    created_at, _, task_id = real.partition(".")
    bad: list[dict[str, Any]] = [
        {"status": "BOGUS"},
        {"status": "waiting"},  # statuses are upper case
        {"status": ["WAITING", "BOGUS"]},
        {"status": ""},
        {"limit": 0},
        {"limit": 501},
        {"limit": -1},
        {"limit": "abc"},
        {"limit": "1.5"},
        {"limit": 10**30},
        {"created_after": -1},
        {"created_after": "abc"},
        {"created_after": "1.5"},
        {"created_after": 253_402_300_800_000},  # after year 9999
        {"created_before": -5},
        {"created_before": "yesterday"},
        {"created_before": ""},
        {"error_code": "Bad-Code"},
        {"error_code": "backend error"},
        {"error_code": "BACKEND_ERROR"},
        {"error_code": "x;drop"},
        {"error_code": ""},
        {"error_code": "a" * 65},
        {"model": "m\x00"},
        {"model": ""},
        {"model": "m" * 257},
        {"server_id": "s\x00"},
        {"server_id": ""},
        {"owner": "o\x00"},
        {"owner": ""},
        {"cursor": "garbage!!"},
        {"cursor": "%%%"},
        {"cursor": ""},
        {"cursor": "12"},
        {"cursor": "12."},
        {"cursor": "." + task_id},
        {"cursor": task_id},
        {"cursor": f"-1.{task_id}"},
        {"cursor": f"0{created_at}.{task_id}"},  # a leading zero
        {"cursor": f"{created_at}000.{task_id}"},  # 16 digits
        {"cursor": f"1e3.{task_id}"},
        {"cursor": f" {created_at}.{task_id}"},
        {"cursor": f"{created_at}.{task_id}\n"},
        {"cursor": f"{created_at}.{task_id} "},
        {"cursor": f"{created_at}.{task_id}\x00"},
        {"cursor": f"{created_at}.a b"},
        {"cursor": f"{created_at}.a/b"},
        {"cursor": f"{created_at}." + "x" * 129},
        {"cursor": f"{created_at}.é"},
    ]
    before = everything(yard)
    for params in bad:
        for client in (admin, world.clients[world.owners[0]]):
            response = search(client, **params)
            assert response.status_code == 400, (params, response.status_code, response.text)
            body = response.json()
            assert isinstance(body["error"], str) and body["error"], params
        # A good filter beside a bad one changes nothing: still 400.
        response = search(admin, **{"model": world.model_a, **params})
        assert response.status_code == 400, (params, response.text)
    # Text that is not UTF-8 once percent-decoded is no match, never a server error.
    for raw in ("model=%FF", "model=%ED%A0%80", "owner=%FF%FE", "server_id=%ED%B0%80"):
        response = admin.get(f"/api/tasks?{raw}")
        assert response.status_code in (200, 400), (raw, response.text)
        assert response.status_code == 400 or response.json()["tasks"] == [], raw
    assert everything(yard) == before
    # The edges that are allowed.
    for params in (
        {"limit": 1},
        {"limit": 500},
        {"created_after": 0},
        {"created_before": 253_402_300_799_999},
        {"error_code": "a" * 64},
        {"cursor": real},
    ):
        assert search(admin, **params).status_code == 200, params


def everything(yard: InProcessYard) -> tuple[dict[str, int], list[Task]]:
    """What is stored: counts by status, and the newest 500 tasks."""
    response = yard.admin.get("/api/stats")
    assert response.status_code == 200, response.text
    return response.json()["tasks"]["byStatus"], found(yard.admin, limit=500)
