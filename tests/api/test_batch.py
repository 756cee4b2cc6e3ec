"""`POST /api/tasks/batch` (issue 11, item 3), against the app in-process
(`taskyard.testing.Harness`): up to 1,000 tasks in one call and one transaction, each created as
a single create would create it (owner, options, warnings), in the request's order; a bad item
is a 400 naming it (`details[].loc`) and stores nothing; the rate limit on creates and the cap
on unfinished tasks count every task of a batch, all or none (the cap also on a real SQLite
file and a real PostgreSQL database).
"""

from __future__ import annotations

from typing import Any

from taskyard.testing import Harness
from tests.api.test_rate_limits import assert_rate_limited, client, serving, stored


async def stored_options(yard: Harness, ids: list[str]) -> list[tuple[int, float, bool]]:
    """(max_attempts, timeout_s, has a queue deadline) of each task, in the order of `ids`."""
    tasks = [await yard.store.get_task(i) for i in ids]
    return [
        (t.max_attempts, t.timeout_s, t.queue_deadline_at is not None)
        for t in tasks
        if t is not None
    ]


def item(model: str = "m", **options: Any) -> dict[str, Any]:
    return {"request": {"model": model, "input": options.pop("input", 0)}, **options}


async def test_a_batch_is_stored_in_order_as_single_creates_would_be() -> None:
    async with (
        serving() as yard,
        client(yard, ["user"]) as alice,
        client(yard, ["user"], "bob") as bob,
    ):
        body = {
            "tasks": [
                item(input=0),
                item(input=1, priority=7, max_attempts=2, timeout_s=30),
                item("nobody-serves-this", input=2, queue_timeout_s=60),
            ]
        }
        answer = await alice.post("/api/tasks/batch", json=body)
        assert answer.status_code == 200, answer.text
        out = answer.json()
        assert out["count"] == 3 and [t["status"] for t in out["tasks"]] == ["WAITING"] * 3
        assert "nobody-serves-this" in out["tasks"][2]["warnings"][0]
        ids = [t["taskId"] for t in out["tasks"]]
        assert len(set(ids)) == 3
        details = [(await alice.get(f"/api/task/{i}")).json()["taskDetails"] for i in ids]
        assert [d["request"]["input"] for d in details] == [0, 1, 2]  # the request's order
        assert [d["priority"] for d in details] == [0, 7, 0]
        assert {d["owner"] for d in details} == {"alice"}
        options = await stored_options(yard, ids)  # not in the API's answers: read in the store
        assert options == [(3, 300.0, False), (2, 30.0, False), (3, 300.0, True)]
        assert (await bob.get(f"/api/task/{ids[0]}")).status_code == 404  # alice owns them
        mine = (await alice.get("/api/tasks", params={"owner": "alice"})).json()["tasks"]
        assert {t["id"] for t in mine} == set(ids)
        assert await stored(yard) == 3


async def test_a_bad_item_is_a_400_naming_it_and_nothing_is_stored() -> None:
    async with serving() as yard, client(yard, ["user"]) as alice:
        bad_items: list[tuple[Any, list[Any]]] = [
            ({"request": {"input": 1}}, ["request", "model"]),  # no model
            ({"request": {"model": ""}}, ["request", "model"]),
            (item(priority=5000), ["priority"]),
            (item(max_attempts=0), ["max_attempts"]),
            (item(timeout_s=-1), ["timeout_s"]),
            ({**item(), "surprise": 1}, ["surprise"]),  # options are a closed set
            ({"model": "m"}, ["request"]),  # a bare request, not an item
        ]
        for bad, field in bad_items:
            answer = await alice.post("/api/tasks/batch", json={"tasks": [item(), bad, item()]})
            assert answer.status_code == 400, (bad, answer.text)
            locations = [d["loc"] for d in answer.json()["details"]]
            assert ["body", "tasks", 1, *field] in locations, (bad, answer.text)
        no_task: dict[str, Any] = {"tasks": []}
        shapes: list[Any] = [no_task, {"tasks": [item()] * 1001}, {"task": [item()]}, [item()]]
        for body in shapes:
            answer = await alice.post("/api/tasks/batch", json=body)
            assert answer.status_code == 400, answer.text
        assert await stored(yard) == 0


async def test_the_rate_limit_counts_every_task_of_a_batch() -> None:
    async with (
        serving(rate_limit_creates="5/minute") as yard,
        client(yard, ["user"]) as alice,
        client(yard, ["admin"], "root") as admin,
    ):
        too_big = await alice.post("/api/tasks/batch", json={"tasks": [item()] * 6})
        assert_rate_limited(too_big, 5, window=60)  # never fits: the message says so
        assert "send at most 5 per call" in too_big.json()["error"]
        three = await alice.post("/api/tasks/batch", json={"tasks": [item()] * 3})
        assert three.status_code == 200, three.text
        refused = await alice.post("/api/tasks/batch", json={"tasks": [item()] * 3})
        assert_rate_limited(refused, 5, window=60)  # 3 + 3 > 5: none of the second batch
        assert await stored(yard) == 3
        assert (await alice.post("/api/task", json={"model": "m"})).status_code == 200  # 4
        assert (await alice.post("/api/tasks/batch", json={"tasks": [item()]})).status_code == 200
        assert_rate_limited(await alice.post("/api/task", json={"model": "m"}), 5, window=60)
        unlimited = await admin.post("/api/tasks/batch", json={"tasks": [item()] * 1000})
        assert unlimited.status_code == 200 and unlimited.json()["count"] == 1000
        assert await stored(yard) == 1005


async def test_the_unfinished_cap_takes_a_whole_batch_or_none(database_url: str) -> None:
    async with (
        serving(database_url, max_unfinished_tasks=4) as yard,
        client(yard, ["user"]) as alice,
        client(yard, ["user"], "bob") as bob,
    ):
        first = await alice.post("/api/tasks/batch", json={"tasks": [item()] * 3})
        assert first.status_code == 200, first.text
        over = await alice.post("/api/tasks/batch", json={"tasks": [item()] * 2})
        assert over.status_code == 429, over.text
        assert "unfinished" in over.json()["error"]
        assert await stored(yard) == 3  # neither of the two
        assert (await bob.post("/api/tasks/batch", json={"tasks": [item()] * 4})).status_code == 200
        last = await alice.post("/api/tasks/batch", json={"tasks": [item()]})
        assert last.status_code == 200  # exactly up to the cap
        assert await stored(yard) == 8
