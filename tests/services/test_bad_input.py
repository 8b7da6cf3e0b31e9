"""Bad input is a 4xx JSON error with a message: never a 500, never a partial write. Text
PostgreSQL cannot store (NUL, lone surrogates) is refused as a kind, in every string input of
every route. Then a fuzzer drives every route of the OpenAPI document Powertools generates and
finds no 5xx."""

from __future__ import annotations

import json
import typing
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from migrations_runtime.dev.server import find_route, load_services
from services.shared.events import LocalContext, http_api_event, response_body
from services.shared.http import encode_cursor
from services.shared.text import RequestModel
from tests.conftest import REPO, query
from tests.services.conftest import HANDLERS, call

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
    # issue 15: a NUL in an otherwise valid body reached the INSERT (psycopg DataError, a 500)
    ("users", "POST", "/users", {"email": "a\x00b@example.com"}, {}, "", 422),
    ("users", "POST", "/users", {"email": "a@example.com", "display_name": "A\x00"}, {}, "",
     422),
    ("users", "POST", "/users", '{"email": "a@example.com", "display_name": "A\\ud800"}', {},
     "", 422),
    ("users", "POST", "/users", {"email": "a@example.com", "x\x00": 1}, {}, "", 422),
    ("users", "POST", "/users", {"email": "a@example.com", "x": "\x00"}, {}, "", 422),
    ("users", "POST", "/users", '{"email": "a@example.com", "\\udfff": {"\\ud800": 1}}', {},
     "", 422),
    ("users", "POST", "/users", {"email": "a@example.com"}, {"Idempotency-Key": "k\x00"}, "",
     422),
    ("users", "GET", "/users", None, {}, "cursor=%00", 422),
    ("users", "POST", "/users", "email=a%40example.com",
     {"content-type": "application/x-www-form-urlencoded"}, "", 415),
    ("users", "POST", "/users", "--b--", {"content-type": "multipart/form-data"}, "", 415),
    ("users", "POST", "/users", "a@example.com", {"content-type": "text/plain"}, "", 415),
    # media types compare case-insensitively, +json is JSON, a charset must be UTF-8 (a
    # breaker found APPLICATION/JSON refused and application/jsonx accepted)
    *[("users", "POST", "/users", {}, {"content-type": media}, "", 422)  # reached validation
      for media in ("APPLICATION/JSON", "Application/Json; charset=UTF-8",
                    'application/json; charset="utf-8"', "application/vnd.api+json")],
    *[("users", "POST", "/users", {"email": "a@example.com"}, {"content-type": media}, "", 415)
      for media in ("application/jsonx", "application/json, text/plain",
                    "application/json; charset=utf-16", "application/json\x00",
                    "text/json")],
    ("users", "POST", "/users", "[" * 5000 + "]" * 5000, {}, "", 422),  # RecursionError
    ("orders", "POST", "/orders", '{"user_id": 1, "total_cents": ' + "9" * 5000 + "}", {}, "",
     422),  # ValueError: an int of over 4300 digits
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
    ("orders", "POST", "/orders", {"user_id": 1, "total_cents": 5, "currency": "EU\x00"}, {},
     "", 422),
    ("orders", "GET", "/users/1/orders", None, {}, "cursor=YWZ0ZXI6MQ%00", 422),
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


# the routes, as `svcmig dev` loads them, and each service's OpenAPI document
SERVICES = load_services(REPO)
OPERATIONS = [(service.name, method, template)
              for service in SERVICES for method, _, template, _ in service.routes]
OPENAPI = {name: json.loads(service.module.app.get_openapi_json_schema())
           for name, service in ((s.name, s) for s in SERVICES)}


# --- text PostgreSQL cannot store, as a kind (issue 15) -------------------------------------
# A NUL (U+0000) cannot be stored in PostgreSQL text (psycopg: DataError); a lone UTF-16
# surrogate (JSON "\ud800") cannot be encoded as UTF-8 (UnicodeEncodeError). Every string input
# of every route is found in the OpenAPI documents, so a field or parameter added later is
# covered by the test below without editing it (it fails until VALID knows a value for it).

UNSTORABLE = {"NUL": "\x00", "lone-surrogate": "\ud800"}


def _is_string(schema: dict[str, Any]) -> bool:
    return schema.get("type") == "string" or any(_is_string(s) for s in schema.get("anyOf", []))


def _body_schema(service: str, operation: dict[str, Any]) -> dict[str, Any]:
    content = operation.get("requestBody", {}).get("content", {}).get("application/json", {})
    ref = content.get("schema", {}).get("$ref", "")
    return dict(OPENAPI[service]["components"]["schemas"].get(ref.rsplit("/", 1)[-1], {}))


def string_inputs() -> list[tuple[str, str, str, str, str]]:
    """(service, method, template, location, name) for every string a route takes: body
    fields, query parameters, headers and path parameters."""
    found = []
    for service, document in OPENAPI.items():
        for template, item in document["paths"].items():
            for method, operation in item.items():
                for parameter in operation.get("parameters", []):
                    if _is_string(parameter["schema"]):
                        found.append((service, method.upper(), template, parameter["in"],
                                      parameter["name"]))
                for name, schema in _body_schema(service, operation).get("properties",
                                                                         {}).items():
                    if _is_string(schema):
                        found.append((service, method.upper(), template, "body", name))
    return found


# a value that passes validation, for every string input (and the bodies' other fields)
VALID: dict[str, Any] = {
    "POST /users": {"email": "ada@example.com", "display_name": "Ada"},
    "POST /uploads": {"filename": "a.txt", "content_type": "text/plain"},
    "POST /orders": {"total_cents": 100, "currency": "EUR"},  # + user_id
    "cursor": encode_cursor(1),
    "idempotency-key": "kind",
}


def request_with(service: str, method: str, template: str, user_id: int,
                 target: tuple[str, str] | None = None, char: str = "") -> Any:
    """The route's request with a valid value in every string input, and `char` put into the
    `target` (location, name) one."""
    def value(location: str, name: str, valid: str) -> str:
        return valid[:1] + char + valid[1:] if (location, name) == target else valid

    operation = OPENAPI[service]["paths"][template][method.lower()]
    path, query_parts, headers = template, [], {}
    for parameter in operation.get("parameters", []):
        where, name = parameter["in"], parameter["name"]
        valid = VALID[name] if _is_string(parameter["schema"]) else str(user_id)
        if where == "path":
            path = path.replace("{" + name + "}", value(where, name, valid))
        elif where == "query":
            query_parts.append(f"{name}={value(where, name, valid)}")
        elif where == "header":  # a new key each time: a replay would hide what is tested
            headers[name] = value(where, name, f"{valid}-{uuid.uuid4().hex[:8]}")
    body = None
    if "requestBody" in operation:
        body = {**VALID[f"{method} {template}"]}
        if template == "/orders":
            body["user_id"] = user_id
        body = {name: value("body", name, field) if isinstance(field, str) else field
                for name, field in body.items()}
    return call(service, method, path, body, headers=headers, query="&".join(query_parts))


STRING_INPUTS = string_inputs()


def test_every_string_input_is_found() -> None:
    assert {("body", "email"), ("body", "display_name"), ("body", "currency"),
            ("query", "cursor"), ("header", "idempotency-key")} <= {
        (location, name) for _, _, _, location, name in STRING_INPUTS}


@pytest.mark.parametrize("char", UNSTORABLE.values(), ids=UNSTORABLE.keys())
@pytest.mark.parametrize("target", STRING_INPUTS, ids=lambda t: f"{t[1]} {t[2]} {t[3]}.{t[4]}")
def test_text_postgres_cannot_store_is_a_422_naming_the_input(
        services_url: str, monkeypatch: pytest.MonkeyPatch,
        target: tuple[str, str, str, str, str], char: str) -> None:
    monkeypatch.delenv("UPLOAD_BUCKET", raising=False)
    service, method, template, location, name = target
    user = call("users", "POST", "/users", {"email": "owner@example.com"})
    assert user.status == 201, user.body
    control = request_with(service, method, template, user.body["id"])
    # the same request without the character passes validation (POST /uploads then answers
    # 503 here: no bucket), so the character is all that is refused below
    assert control.status < 400 or "UPLOAD_BUCKET" in control.message, control.body
    before = counts(services_url)
    reply = request_with(service, method, template, user.body["id"], (location, name), char)
    assert reply.status == 422, reply.body
    assert any(error["loc"] == [location, name] and error["type"] == "unstorable_text"
               for error in reply.body["errors"]), reply.body
    assert name in reply.message and ("NUL" in reply.message or "surrogate" in reply.message)
    assert counts(services_url) == before


def test_every_request_body_is_a_request_model() -> None:
    """RequestModel checks every string field of a body, so a body model must derive from it."""
    bodies = []
    for module in HANDLERS.values():
        for route in module.app._static_routes + module.app._dynamic_routes:
            hints = typing.get_type_hints(route.func)
            hints.pop("return", None)
            bodies += [hint for hint in hints.values()
                       if isinstance(hint, type) and issubclass(hint, BaseModel)]
    assert {"NewUser", "NewUpload", "NewOrder"} <= {body.__name__ for body in bodies}
    assert all(issubclass(body, RequestModel) for body in bodies)


def handler_reply(service: str, event: dict[str, Any]) -> tuple[int, Any]:
    response = HANDLERS[service].handler(event, LocalContext(function_name=service))
    return response["statusCode"], json.loads(response_body(response))


def test_crafted_events_with_unstorable_text_get_no_5xx(services_url: str) -> None:
    """What HTTP cannot carry but an event can: a lone surrogate as a character of the body
    string, of a query parameter or of the path; and a body that is not UTF-8."""
    before = counts(services_url)
    event = http_api_event("POST", "/users", body="{}")
    event["body"] = '{"email": "a\ud800@example.com"}'
    status, body = handler_reply("users", event)
    assert status == 422 and body["errors"][0]["type"] == "unstorable_text", body
    event = http_api_event("GET", "/users")
    event["queryStringParameters"] = {"cursor": "\ud800"}
    status, body = handler_reply("users", event)
    assert status == 422 and body["errors"][0]["loc"] == ["query", "cursor"], body
    event = http_api_event("GET", "/users/1")
    event["rawPath"] = event["requestContext"]["http"]["path"] = "/users/1\ud800"
    assert handler_reply("users", event)[0] in (404, 422)
    status, body = handler_reply("users", http_api_event("POST", "/users",
                                                         body=b'{"email": "\xff@example.com"}'))
    assert status == 422 and "UTF-8" in body["message"], body
    assert counts(services_url) == before


# --- fuzzing every route of the generated OpenAPI document ---------------------------------

# Why this fuzzer missed issue 15 (a NUL in an otherwise valid email was a 500): hypothesis'
# text() draws U+0000 rarely and a lone surrogate never; query values were encoded twice
# (urlencode over quote: a NUL arrived as the text "%00"); and a body field got random JSON, so
# no email matched the pattern and none reached the INSERT. Now strings often hold those
# characters, a field with a pattern also gets strings matching it (with one of them put in),
# and query values are encoded once.
unstorable = st.sampled_from(["\x00", "\x00", "\ud800", "\udfff"])
text = st.text(st.characters() | unstorable, max_size=20)  # JSON-encoded: escapes are sent
raw_text = st.text(st.characters() | st.just("\x00"), max_size=40)  # HTTP carries no surrogate
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(text, children, max_size=4),
    max_leaves=10)
segment = st.one_of(st.integers(min_value=-2**70, max_value=2**70).map(str),
                    text.filter(bool).map(lambda t: quote(t, safe="", errors="surrogatepass")))


def with_unstorable(strings: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """`strings`, and the same with a NUL or a lone surrogate put in somewhere."""
    return strings | st.builds(lambda s, char, at: s[:at] + char + s[at:],
                               strings, unstorable, st.integers(0, 20))


def field_values(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values for a body field: strings that pass its constraints (with or without a character
    PostgreSQL cannot store), or any JSON at all."""
    if not _is_string(schema):
        return json_values
    string = next(s for s in [schema, *schema.get("anyOf", [])] if s.get("type") == "string")
    pattern = string.get("pattern")
    valid = st.from_regex(pattern, fullmatch=True) if pattern else st.text(min_size=1,
                                                                            max_size=20)
    return st.one_of(with_unstorable(valid), with_unstorable(valid), json_values)


def body_for(service: str, method: str, template: str) -> st.SearchStrategy[Any]:
    """Bodies shaped like the schema (its required fields and some optional ones, with
    valid-looking or random values, sometimes an unknown field) or anything at all."""
    operation = OPENAPI[service]["paths"][template][method.lower()]
    schema = _body_schema(service, operation)
    values = {name: field_values(field) for name, field in schema.get("properties", {}).items()}
    required = set(schema.get("required", ()))
    shaped = st.fixed_dictionaries({k: v for k, v in values.items() if k in required},
                                   optional={k: v for k, v in values.items() if k not in required})
    unknown = st.builds(lambda known, extra: {**known, **extra}, shaped,
                        st.dictionaries(text, json_values, min_size=1, max_size=1))
    return st.one_of(shaped.map(json.dumps), shaped.map(json.dumps), unknown.map(json.dumps),
                     json_values.map(json.dumps), raw_text, st.none())


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str, str | None, str, dict[str, str]]:
    # the routes that take a body twice as often: most text enters there
    service, method, template = draw(st.sampled_from(
        OPERATIONS + [op for op in OPERATIONS if op[1] in ("POST", "PUT", "PATCH")]))
    body = draw(body_for(service, method, template))
    if draw(st.integers(0, 9)) == 0:  # sometimes the wrong method
        method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]))
    path = "/".join(draw(segment) if part.startswith("{") else part
                    for part in template.split("/"))
    values = st.one_of(st.integers(-5, 200).map(str), with_unstorable(
        st.builds(encode_cursor, st.integers(1, 2**63 - 1))), text)
    params = draw(st.dictionaries(st.sampled_from(["limit", "cursor", "x"]), values,
                                  max_size=2))
    headers = draw(st.dictionaries(st.just("Idempotency-Key"),
                                   with_unstorable(st.text(min_size=1, max_size=8)),
                                   max_size=1))
    if method not in ("POST", "PUT", "PATCH"):
        body = None
    return method, path, body, urlencode(params, errors="surrogatepass"), headers


@pytest.fixture
def uploads(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """POST /uploads configured, so a valid request presigns (offline, with dummy keys) instead
    of answering 503; the cached S3 client is dropped before and after."""
    for name, value in {"UPLOAD_BUCKET": "svcmig-fuzz", "AWS_ACCESS_KEY_ID": "fuzz",
                        "AWS_SECRET_ACCESS_KEY": "fuzz", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    HANDLERS["users"]._s3.cache_clear()
    yield
    HANDLERS["users"]._s3.cache_clear()


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(request=requests())
def test_fuzzed_requests_never_get_a_5xx(services_url: str, uploads: None,
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
