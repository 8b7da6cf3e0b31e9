"""Fixtures for the service handlers: a fresh database per test with every service's migrations
applied by the real migrator, and a way to call a real handler with a real API Gateway v2 event."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from migrations_runtime.engine.apply import migrate
from services.orders import handler as orders_handler
from services.shared.events import LocalContext, http_api_event, response_body
from services.users import handler as users_handler
from tests.conftest import REPO

HANDLERS = {"users": users_handler, "orders": orders_handler}


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: Any

    @property
    def message(self) -> str:
        return str(self.body.get("message", "")) if isinstance(self.body, dict) else ""


def call(service: str, method: str, path: str, body: Any = None, *,
         headers: dict[str, str] | None = None, query: str = "", raw: bool = False) -> Reply:
    """Invoke `services.<service>.handler.handler` as API Gateway would."""
    payload = body if raw or body is None else json.dumps(body)
    event = http_api_event(method, path, body=payload, query=query,
                           headers={"content-type": "application/json", **(headers or {})})
    response = HANDLERS[service].handler(event, LocalContext(function_name=service))
    text = response_body(response)
    parsed = json.loads(text) if text else None
    return Reply(response["statusCode"], response.get("headers") or {}, parsed)


def reset_pools() -> None:
    for module in HANDLERS.values():
        module.db.close(forget_credentials=True)


@pytest.fixture
def services_url(database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A migrated database; the handlers connect to it as users_app / orders_app."""
    migrate(database_url, REPO, "all", log=lambda _: None)
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    monkeypatch.delenv("DB_SECRET_ID", raising=False)
    reset_pools()
    try:
        yield database_url
    finally:
        reset_pools()  # before the database is dropped
