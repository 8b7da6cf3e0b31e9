"""The real handlers, called with real API Gateway HTTP API v2 events, against real Postgres."""

from __future__ import annotations

import io
import json
import threading
from typing import Any

import psycopg
import pytest

from services.shared.db import Database
from services.shared.events import LocalContext
from services.shared.idempotency import IdempotentWrites
from tests.conftest import query
from tests.services.conftest import call


def new_user(email: str = "ada@example.com", **extra: Any) -> int:
    reply = call("users", "POST", "/users", {"email": email, **extra})
    assert reply.status == 201, reply.body
    return int(reply.body["id"])


def test_users_create_get_and_page_through(services_url: str) -> None:
    ids = [new_user(f"u{i}@example.com", display_name=f"U {i}") for i in range(5)]
    got = call("users", "GET", f"/users/{ids[2]}")
    assert got.status == 200
    assert got.body["email"] == "u2@example.com" and got.body["display_name"] == "U 2"
    seen: list[int] = []
    cursor = ""
    for _ in range(5):
        page = call("users", "GET", "/users", query=f"limit=2{cursor}")
        assert page.status == 200
        seen += [item["id"] for item in page.body["items"]]
        if page.body["next_cursor"] is None:
            break
        cursor = f"&cursor={page.body['next_cursor']}"
    assert seen == ids


def test_orders_for_an_existing_user(services_url: str) -> None:
    user_id = new_user()
    created = call("orders", "POST", "/orders", {"user_id": user_id, "total_cents": 1250})
    assert created.status == 201 and created.body["currency"] == "EUR"
    assert created.headers["Location"] == f"/orders/{created.body['id']}"
    assert call("orders", "GET", f"/orders/{created.body['id']}").body == created.body
    listed = call("orders", "GET", f"/users/{user_id}/orders")
    assert listed.status == 200 and listed.body["items"] == [created.body]
    other = new_user("bob@example.com")
    assert call("orders", "GET", f"/users/{other}/orders").body == {"items": [],
                                                                   "next_cursor": None}


def test_unknown_user_is_a_4xx_with_no_partial_write(services_url: str) -> None:
    reply = call("orders", "POST", "/orders", {"user_id": 424242, "total_cents": 1},
                 headers={"Idempotency-Key": "k-unknown"})
    assert reply.status == 422 and "user 424242 does not exist" in reply.message
    assert query(services_url, "SELECT count(*) FROM orders.orders") == [(0,)]
    # the key was freed: nothing half-done is remembered under it
    assert query(services_url, "SELECT count(*) FROM orders.idempotency_records") == [(0,)]
    assert call("orders", "GET", "/users/424242/orders").status == 404


def test_idempotent_post_replays_and_refuses_a_different_body(services_url: str) -> None:
    user_id = new_user()
    body = {"user_id": user_id, "total_cents": 500, "currency": "USD"}
    key = {"Idempotency-Key": "order-1"}
    first = call("orders", "POST", "/orders", body, headers=key)
    again = call("orders", "POST", "/orders", body, headers=key)
    assert first.status == again.status == 201
    assert again.body == first.body and again.headers.get("Idempotent-Replayed") == "true"
    assert query(services_url, "SELECT count(*) FROM orders.orders") == [(1,)]
    changed = call("orders", "POST", "/orders", {**body, "total_cents": 501}, headers=key)
    assert changed.status == 422 and "different request body" in changed.message
    # the same key on another route is another key
    assert call("users", "POST", "/users", {"email": "x@example.com"}, headers=key).status == 201


def test_expired_idempotency_record_runs_again(services_url: str) -> None:
    user_id = new_user()
    body, key = {"user_id": user_id, "total_cents": 7}, {"Idempotency-Key": "expiring"}
    first = call("orders", "POST", "/orders", body, headers=key)
    query(services_url, "UPDATE orders.idempotency_records SET expiration = 0")
    second = call("orders", "POST", "/orders", body, headers=key)
    assert second.status == 201 and second.body["id"] != first.body["id"]
    assert "Idempotent-Replayed" not in second.headers


def test_concurrent_duplicate_gets_in_progress_then_the_replay(services_url: str) -> None:
    """Another instance (its own pool) is still running the write when the duplicate arrives."""
    from services.orders.models import NewOrder

    user_id = new_user()
    body = {"user_id": user_id, "total_cents": 900}
    payload = NewOrder.model_validate(body).model_dump(mode="json")
    other_instance = IdempotentWrites(Database("orders"))
    inside, release = threading.Event(), threading.Event()
    results: list[dict[str, Any]] = []

    def slow_write(conn: psycopg.Connection[Any]) -> dict[str, Any]:
        row = conn.execute("INSERT INTO orders.orders (user_id, total_cents) VALUES (%s, %s) "
                           "RETURNING id", (user_id, 900)).fetchone()
        inside.set()
        release.wait(10)
        assert row is not None
        return {"id": row[0], "user_id": user_id, "total_cents": 900, "currency": "EUR",
                "created_at": "2026-11-25T00:00:00Z"}

    worker = threading.Thread(target=lambda: results.append(
        other_instance.run("dup", "POST /orders", payload, slow_write,
                                  context=LocalContext())[0]))
    worker.start()
    try:
        assert inside.wait(10)
        busy = call("orders", "POST", "/orders", body, headers={"Idempotency-Key": "dup"})
        assert busy.status == 409 and busy.headers.get("Retry-After") == "1"
        assert "still in progress" in busy.message
    finally:
        release.set()
        worker.join(10)
        other_instance.db.close()
    replay = call("orders", "POST", "/orders", body, headers={"Idempotency-Key": "dup"})
    assert replay.status == 201 and replay.body["id"] == results[0]["id"]
    assert query(services_url, "SELECT count(*) FROM orders.orders") == [(1,)]


def test_pooled_connection_killed_between_invocations(services_url: str) -> None:
    """The freeze case: while the instance is frozen, the server closes its idle connection;
    the checkout check notices and the next invocation gets a fresh one."""
    user_id = new_user()
    assert call("users", "GET", f"/users/{user_id}").status == 200
    killed = query(services_url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                   "WHERE usename = 'users_app' AND datname = current_database()")
    assert killed == [(True,)]
    assert call("users", "GET", f"/users/{user_id}").status == 200
    assert call("users", "POST", "/users", {"email": "after@example.com"}).status == 201


def test_each_service_reaches_only_its_own_schema(services_url: str) -> None:
    from services.shared.db import app_conninfo

    with psycopg.connect(app_conninfo(services_url, "users"), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM orders.orders")
    with psycopg.connect(app_conninfo(services_url, "orders"), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT email FROM users.users")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM users.users")


def test_one_json_log_line_per_request(services_url: str) -> None:
    from services.users.handler import logger

    stream = io.StringIO()
    previous = logger.registered_handler.setStream(stream)  # type: ignore[attr-defined]
    try:
        call("users", "GET", "/users/1")
    finally:
        logger.registered_handler.setStream(previous)  # type: ignore[attr-defined]
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    request = [line for line in lines if line.get("message") == "request"]
    assert len(request) == 1
    line = request[0]
    assert line["service"] == "users" and line["function_name"] == "users"
    assert line["status"] == 404 and line["latency_ms"] >= 0
    assert {"cold_start", "function_request_id", "correlation_id"} <= set(line)
