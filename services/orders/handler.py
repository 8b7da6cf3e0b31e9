"""The orders service: `POST /orders` (idempotent, for an existing user), `GET /orders/{id}`,
`GET /users/{id}/orders` (keyset pages).

Lambda handler: `services.orders.handler.handler`. The orders table and its foreign key to
users.users come from services/orders/migrations/; the users service grants orders_app
`SELECT (id)` on users.users so this service can tell "no orders" from "no such user".
"""

from __future__ import annotations

from typing import Annotated, Any

import psycopg
from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.openapi.params import Header, Path, Query

from services.shared.db import Database
from services.shared.http import (
    BIGINT_MAX,
    NotFound,
    Unprocessable,
    created_response,
    decode_cursor,
    encode_cursor,
    make_resolver,
)
from services.shared.idempotency import IdempotentWrites
from services.shared.observability import lambda_entrypoint
from services.shared.text import Text

from .models import NewOrder, Order, OrderPage

SERVICE = "orders"
COLUMNS = "id, user_id, total_cents, currency, created_at"

app = make_resolver()
db = Database(SERVICE)
writes = IdempotentWrites(db)

Id = Annotated[int, Path(gt=0, le=BIGINT_MAX)]
IdempotencyKey = Annotated[Text | None, Header(alias="idempotency-key", max_length=255,
                                              description="retries with the same key and "
                                              "body return the first response")]


def _order(row: tuple[Any, ...]) -> Order:
    return Order(id=row[0], user_id=row[1], total_cents=row[2], currency=row[3],
                 created_at=row[4])


@app.post("/orders", responses={201: {"description": "created (or replayed)"}})
def create_order(order: NewOrder, idempotency_key: IdempotencyKey = None) -> Response[Order]:
    def insert(conn: psycopg.Connection[Any]) -> dict[str, Any]:
        try:
            row = conn.execute(
                f"INSERT INTO orders.orders (user_id, total_cents, currency) "
                f"VALUES (%s, %s, %s) RETURNING {COLUMNS}",
                (order.user_id, order.total_cents, order.currency)).fetchone()
        except psycopg.errors.ForeignKeyViolation as err:  # checked by Postgres, atomically
            raise Unprocessable(f"user {order.user_id} does not exist") from err
        assert row is not None
        return _order(row).model_dump(mode="json")

    created, replayed = writes.run(idempotency_key, "POST /orders",
                                   order.model_dump(mode="json"), insert,
                                   context=app.lambda_context)
    return created_response(created, f"/orders/{created['id']}", replayed)


@app.get("/orders/<order_id>")
def get_order(order_id: Id) -> Order:
    with db.transaction() as conn:
        row = conn.execute(f"SELECT {COLUMNS} FROM orders.orders WHERE id = %s",
                           (order_id,)).fetchone()
    if row is None:
        raise NotFound(f"order {order_id} does not exist")
    return _order(row)


@app.get("/users/<user_id>/orders")
def list_user_orders(user_id: Id, limit: Annotated[int, Query(ge=1, le=100)] = 20,
                     cursor: Annotated[Text | None, Query(max_length=200)] = None) -> OrderPage:
    after = decode_cursor(cursor)
    with db.transaction() as conn:
        rows = conn.execute(  # served by orders_user_id_idx (user_id, id)
            f"SELECT {COLUMNS} FROM orders.orders WHERE user_id = %s AND id > %s "
            "ORDER BY id LIMIT %s", (user_id, after, limit + 1)).fetchall()
        if not rows and not conn.execute("SELECT 1 FROM users.users WHERE id = %s",
                                         (user_id,)).fetchone():
            raise NotFound(f"user {user_id} does not exist")
    items = [_order(row) for row in rows[:limit]]
    return OrderPage(items=items,
                     next_cursor=encode_cursor(items[-1].id) if len(rows) > limit else None)


handler, logger = lambda_entrypoint(SERVICE, app)
