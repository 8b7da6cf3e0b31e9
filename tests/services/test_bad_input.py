"""Bad input is a 4xx JSON error with a message: never a 500, never a partial write. Then a
fuzzer drives every route of the OpenAPI document Powertools generates and finds no 5xx."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from migrations_runtime.dev.server import find_route, load_services
from tests.conftest import REPO, query
from tests.services.conftest import call

CASES: list[tuple[str, str, str, Any, dict[str, str], str, int]] = [
    # service, method, path, body (str = raw), headers, query, status
    ("users", "POST", "/users", "{not json", {}, "", 422),
    ("users", "POST", "/users", "", {}, "", 422),
    ("users", "POST", "/users", "[1, 2]", {}, "", 422),
    ("users", "POST", "/users", {"email": 42}, {}, "", 422),
    ("users", "POST", "/users", {}, {}, "", 422),
    ("users", "POST", "/users", {"email": "a@example.com", "admin": True}, {}, "", 422),
    ("users", "POST", "/users", {"email": "not-an-email"}, {}, "", 422),
    ("users", "POST", "/users", {"email": "a@example.com", "pad": "x" * 70_000}, {}, "", 413),
    ("users", "POST", "/users", {"email": "a@example.com"}, {"Idempotency-Key": "k" * 300},
     "", 422),
    ("users", "GET", "/users/abc", None, {}, "", 422),
    ("users", "GET", "/users/-1", None, {}, "", 422),
    ("users", "GET", "/users/0", None, {}, "", 422),
    ("users", "GET", "/users/99999999999999999999", None, {}, "", 422),
    ("users", "GET", "/users/12345", None, {}, "", 404),
    ("users", "GET", "/users", None, {}, "cursor=bogus", 400),
    ("users", "GET", "/users", None, {}, "cursor=YWZ0ZXI6LTE", 400),  # after:-1
    ("users", "GET", "/users", None, {}, "limit=0", 422),
    ("users", "GET", "/users", None, {}, "limit=ten", 422),
    ("users", "PATCH", "/users/1", {}, {}, "", 405),
    ("users", "GET", "/nope", None, {}, "", 404),
    ("orders", "POST", "/orders", {"user_id": "1", "total_cents": 5}, {}, "", 422),
    ("orders", "POST", "/orders", {"user_id": 1, "total_cents": -5}, {}, "", 422),
    ("orders", "POST", "/orders", {"user_id": 1, "total_cents": 2**40}, {}, "", 422),
    ("orders", "POST", "/orders", {"user_id": 1, "total_cents": 5, "currency": "euro"}, {},
     "", 422),
    ("orders", "POST", "/orders", {"user_id": 1, "total_cents": 5.5}, {}, "", 422),
    ("orders", "POST", "/orders", {"user_id": 777, "total_cents": 5}, {}, "", 422),
    ("orders", "GET", "/orders/x", None, {}, "", 422),
    ("orders", "GET", "/orders/5", None, {}, "", 404),
    ("orders", "GET", "/users/777/orders", None, {}, "", 404),
    ("orders", "GET", "/users/1/orders", None, {}, "cursor=%%%", 400),
    ("orders", "DELETE", "/orders/1", None, {}, "", 405),
]


def counts(url: str) -> list[tuple[Any, ...]]:
    return query(url, "SELECT (SELECT count(*) FROM users.users), "
                 "(SELECT count(*) FROM orders.orders), "
                 "(SELECT count(*) FROM users.idempotency_records), "
                 "(SELECT count(*) FROM orders.idempotency_records)")


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[1]} {c[2]} {c[5]} → {c[6]}")
def test_bad_input_is_a_4xx_with_a_message_and_no_write(
        services_url: str, case: tuple[str, str, str, Any, dict[str, str], str, int]) -> None:
    service, method, path, body, headers, query_string, status = case
    before = counts(services_url)
    reply = call(service, method, path, body, headers=headers, query=query_string,
                 raw=isinstance(body, str))
    assert reply.status == status, reply.body
    assert reply.message, reply.body
    assert counts(services_url) == before


def test_reused_key_with_another_body_writes_nothing(services_url: str) -> None:
    key = {"Idempotency-Key": "same"}
    assert call("users", "POST", "/users", {"email": "a@example.com"}, headers=key).status == 201
    before = counts(services_url)
    reply = call("users", "POST", "/users", {"email": "b@example.com"}, headers=key)
    assert reply.status == 422 and "different request body" in reply.message
    assert counts(services_url) == before


# --- fuzzing every route of the generated OpenAPI document ---------------------------------

SERVICES = load_services(REPO)
OPERATIONS = [(service.name, method, template)
              for service in SERVICES for method, _, template, _ in service.routes]
OPENAPI = {name: json.loads(service.module.app.get_openapi_json_schema())
           for name, service in ((s.name, s) for s in SERVICES)}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=10)
segment = st.one_of(st.integers(min_value=-2**70, max_value=2**70).map(str),
                    st.text(min_size=1, max_size=12).map(lambda t: quote(t, safe="")))


def body_for(service: str, method: str, template: str) -> st.SearchStrategy[Any]:
    """Bodies shaped like the schema (its field names, random values) or anything at all."""
    operation = OPENAPI[service]["paths"][template][method.lower()]
    content = operation.get("requestBody", {}).get("content", {}).get("application/json", {})
    ref = content.get("schema", {}).get("$ref", "")
    schema = OPENAPI[service]["components"]["schemas"].get(ref.rsplit("/", 1)[-1], {})
    fields = list(schema.get("properties", {})) + ["unexpected"]
    shaped = st.dictionaries(st.sampled_from(fields), json_values, max_size=len(fields))
    return st.one_of(st.none(), shaped.map(json.dumps), json_values.map(json.dumps),
                     st.text(max_size=40))


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str, str | None, str, dict[str, str]]:
    service, method, template = draw(st.sampled_from(OPERATIONS))
    body = draw(body_for(service, method, template))
    if draw(st.integers(0, 9)) == 0:  # sometimes the wrong method
        method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]))
    path = "/".join(draw(segment) if part.startswith("{") else part
                    for part in template.split("/"))
    params = draw(st.dictionaries(st.sampled_from(["limit", "cursor", "x"]),
                                  segment, max_size=2))
    headers = draw(st.dictionaries(st.just("Idempotency-Key"), st.text(max_size=8), max_size=1))
    if method not in ("POST", "PUT", "PATCH"):
        body = None
    return method, path, body, urlencode(params), headers


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(request=requests())
def test_fuzzed_requests_never_get_a_5xx(services_url: str,
                                         request: tuple[str, str, str | None, str,
                                                        dict[str, str]]) -> None:
    method, path, body, query_string, headers = request
    found = find_route(SERVICES, method, path.split("?")[0])
    services = [found.service.name] if found.service else ["users", "orders"]
    for service in services:
        reply = call(service, method, path, body, headers=headers, query=query_string, raw=True)
        assert reply.status < 500, (method, path, body, reply.body)
        if reply.status >= 400:
            assert reply.message, reply.body
