"""I5 idempotency: one Idempotency-Key creates at most one notification, also when its retries race each other
across nodes; a replay answers exactly what the first request got; the same key with another body is a 422."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest

from conformance.client import Api
from conformance.cluster import Target
from conformance.history import History

KEYS, RETRIES = 40, 6


async def _post(http: httpx.AsyncClient, url: str, body: dict[str, Any], key: str) -> tuple[int, Any]:
    resp = await http.post(f"{url}/notifications", json=body, headers={"Idempotency-Key": key})
    try:
        return resp.status_code, resp.json()
    except ValueError:
        return resp.status_code, resp.text


@pytest.mark.timeout(180)
async def test_racing_retries_of_one_key_create_one_notification(
    target: Target, http: httpx.AsyncClient, history: History, run_id: str
) -> None:
    urls = target.urls
    user = f"{run_id}-idem"
    bodies = {
        f"{run_id}-key-{k}-{uuid.uuid4().hex}": {
            "user_ids": [user], "event": "idem.race", "payload": {"cid": f"{run_id}-cid-{k}", "k": k}
        }
        for k in range(KEYS)
    }  # fmt: skip

    async def race(key: str, body: dict[str, Any]) -> list[tuple[int, Any]]:
        return list(await asyncio.gather(*(_post(http, urls[i % len(urls)], body, key) for i in range(RETRIES))))

    answers = dict(zip(bodies, await asyncio.gather(*(race(k, b) for k, b in bodies.items())), strict=True))
    problems = []
    for key, got in answers.items():
        statuses = {status for status, _ in got}
        ids = {body.get("id") for status, body in got if status == 202 and isinstance(body, dict)}
        if statuses != {202} or len(ids) != 1 or any(body != got[0][1] for _, body in got):
            problems.append(f"{key}: {got}")
    assert not problems, f"{len(problems)} keys got differing answers to identical retries:\n" + "\n".join(problems[:5])

    # Later replays, through every node, answer the same again.
    for key in list(bodies)[:5]:
        for url in urls:
            assert await _post(http, url, bodies[key], key) == answers[key][0], f"replay of {key} differs"

    items = await Api(http, urls[0], history, "sweeper").sweep(user)
    cids = [i["payload"]["cid"] for i in items]
    assert len(items) == KEYS and sorted(cids) == sorted(b["payload"]["cid"] for b in bodies.values()), (
        f"{KEYS} keys created {len(items)} notifications; duplicated cids:"
        f" {sorted({c for c in cids if cids.count(c) > 1})[:10]}"
    )
    created = {a[0][1]["id"] for a in answers.values()}
    assert {i["id"] for i in items} == created


@pytest.mark.timeout(60)
async def test_the_same_key_with_another_body_is_refused_and_creates_nothing(
    target: Target, http: httpx.AsyncClient, history: History, run_id: str
) -> None:
    first_user, other_user = f"{run_id}-idem-a", f"{run_id}-idem-b"
    key = f"{run_id}-conflict"
    body = {"user_ids": [first_user], "event": "idem.conflict", "payload": {"n": 1}}
    status, first = await _post(http, target.urls[0], body, key)
    assert status == 202, first
    for changed in (
        {**body, "user_ids": [other_user]},
        {**body, "payload": {"n": 2}},
        {**body, "event": "idem.other"},
    ):
        status, answer = await _post(http, target.urls[-1], changed, key)
        assert status == 422, f"same key, different body answered {status}: {answer}"
        assert isinstance(answer, dict) and "error" in answer, answer
    api = Api(http, target.urls[0], history, "sweeper")
    assert [i["id"] for i in await api.sweep(first_user)] == [first["id"]]
    assert await api.sweep(other_user) == []


@pytest.mark.timeout(120)
async def test_batch_items_keep_their_keys_across_racing_batches(
    target: Target, http: httpx.AsyncClient, history: History, run_id: str
) -> None:
    """POST /notifications/batch: each item's ``idempotency_key`` is an Idempotency-Key of its own. Racing
    retries of one batch, through every node, create each keyed item once; a key reused with another body
    answers that item with an error and creates nothing for it."""
    user = f"{run_id}-idem-batch"
    items = [
        {"user_id": user, "event": "idem.batch", "payload": {"cid": f"{run_id}-bcid-{k}"},
         "idempotency_key": f"{run_id}-bkey-{k}-{uuid.uuid4().hex}"}
        for k in range(20)
    ]  # fmt: skip

    async def send(url: str, body: dict[str, Any]) -> tuple[int, Any]:
        resp = await http.post(f"{url}/notifications/batch", json=body)
        return resp.status_code, resp.json()

    urls = target.urls
    answers = await asyncio.gather(*(send(urls[i % len(urls)], {"notifications": items}) for i in range(RETRIES)))
    assert {status for status, _ in answers} == {202}, answers
    results = [body["results"] for _, body in answers]
    assert all(r == results[0] for r in results), "racing retries of one batch got differing answers"
    assert all(r.get("status") == "accepted" for r in results[0]), results[0]

    changed = [{**items[0], "payload": {"cid": f"{run_id}-bcid-changed"}}, {**items[1]}]
    status, body = await send(urls[-1], {"notifications": changed})
    assert status == 202, body
    assert "error" in body["results"][0] and body["results"][0]["error"]["code"], body
    assert body["results"][1] == results[0][1]

    swept = await Api(http, urls[0], history, "sweeper").sweep(user)
    assert sorted(i["id"] for i in swept) == sorted(r["id"] for r in results[0]), (
        f"{len(items)} keyed batch items created {len(swept)} notifications"
    )
