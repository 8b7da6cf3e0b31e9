"""Idempotent writes with Powertools' idempotency utility, stored in Postgres in the service's
own schema (`<service>.idempotency_records`): Powertools ships no Postgres store, and a store is
the 4-method `BasePersistenceLayer`.

Flow for a request with an `Idempotency-Key`:
1. `_put_record` inserts an INPROGRESS row in its own short transaction. If a live row exists,
   Powertools sees it: INPROGRESS → "in progress" (409 here), COMPLETED → the stored response
   is replayed; a different body under the same key → 422. Expired rows are taken over.
2. The write runs in a transaction that stays open, and `_update_record` marks the row
   COMPLETED **in that same transaction**, so the business row and the stored response commit
   together: a crash between them cannot leave a write whose key would run it again.
3. When the write raises (bad input, unknown user…), its transaction rolls back first and then
   `_delete_record` frees the key, so the client may retry with the same key.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import ExitStack
from contextvars import ContextVar
from typing import Any

import psycopg
from aws_lambda_powertools.utilities.idempotency import (
    BasePersistenceLayer,
    IdempotencyConfig,
    idempotent_function,
)
from aws_lambda_powertools.utilities.idempotency.exceptions import (
    IdempotencyAlreadyInProgressError,
    IdempotencyItemAlreadyExistsError,
    IdempotencyItemNotFoundError,
    IdempotencyPersistenceLayerError,
    IdempotencyValidationError,
)
from aws_lambda_powertools.utilities.idempotency.persistence.datarecord import DataRecord
from psycopg import sql

from .db import Database
from .http import ApiError, Conflict, ServiceUnavailable, Unprocessable

TABLE = "idempotency_records"
MAX_KEY_LENGTH = 255
# The connection of a write whose transaction is still open (step 2 above).
_open_write: ContextVar[psycopg.Connection[Any] | None] = ContextVar("open_write", default=None)


class PostgresPersistenceLayer(BasePersistenceLayer):
    """Powertools' persistence layer over `<schema>.idempotency_records`."""

    def __init__(self, db: Database, schema: str | None = None, table: str = TABLE) -> None:
        super().__init__()
        self.db = db
        self.table = sql.Identifier(schema or db.service, table)

    def _get_record(self, idempotency_key: str) -> DataRecord:
        with self.db.transaction() as conn:
            return self._read(conn, idempotency_key)

    def _read(self, conn: psycopg.Connection[Any], idempotency_key: str) -> DataRecord:
        row = conn.execute(
            sql.SQL("SELECT status, expiration, in_progress_expiration, data, validation "
                    "FROM {} WHERE id = %s").format(self.table), (idempotency_key,)).fetchone()
        if row is None:
            raise IdempotencyItemNotFoundError
        return DataRecord(idempotency_key=idempotency_key, status=row[0], expiry_timestamp=row[1],
                          in_progress_expiry_timestamp=row[2], response_data=row[3] or "",
                          payload_hash=row[4] or "")

    def _put_record(self, data_record: DataRecord) -> None:
        now = time.time()
        with self.db.transaction() as conn:
            taken = conn.execute(
                sql.SQL(
                    "INSERT INTO {t} AS r (id, status, expiration, in_progress_expiration, "
                    "validation) VALUES (%(id)s, %(status)s, %(exp)s, %(ipexp)s, %(hash)s) "
                    "ON CONFLICT (id) DO UPDATE SET status = excluded.status, "
                    "expiration = excluded.expiration, "
                    "in_progress_expiration = excluded.in_progress_expiration, "
                    "validation = excluded.validation, data = NULL "
                    "WHERE r.expiration < %(now)s OR (r.status = 'INPROGRESS' "
                    "AND r.in_progress_expiration < %(now_ms)s) "
                    "RETURNING id").format(t=self.table),
                {"id": data_record.idempotency_key, "status": data_record.status,
                 "exp": data_record.expiry_timestamp,
                 "ipexp": data_record.in_progress_expiry_timestamp,
                 "hash": data_record.payload_hash, "now": int(now),
                 "now_ms": int(now * 1000)}).fetchone()
            if taken is None:  # a live record holds the key: same body? then Powertools decides
                old = self._read(conn, data_record.idempotency_key)
                self._validate_payload(data_payload=data_record, stored_data_record=old)
                raise IdempotencyItemAlreadyExistsError(old_data_record=old)

    def _update_record(self, data_record: DataRecord) -> None:
        statement = sql.SQL("UPDATE {} SET status = %s, expiration = %s, data = %s, "
                            "validation = %s WHERE id = %s").format(self.table)
        params = (data_record.status, data_record.expiry_timestamp, data_record.response_data,
                  data_record.payload_hash, data_record.idempotency_key)
        conn = _open_write.get()
        if conn is not None:  # commit the stored response together with the write itself
            conn.execute(statement, params)
            return
        with self.db.transaction() as own:
            own.execute(statement, params)

    def _delete_record(self, data_record: DataRecord) -> None:
        with self.db.transaction() as conn:
            conn.execute(sql.SQL("DELETE FROM {} WHERE id = %s").format(self.table),
                         (data_record.idempotency_key,))


Work = Callable[[psycopg.Connection[Any]], dict[str, Any]]


class IdempotentWrites:
    """Runs a service's writes at most once per `Idempotency-Key` (see the module docstring)."""

    def __init__(self, db: Database, *, expires_after_seconds: int = 24 * 3600) -> None:
        self.db = db
        self.layer = PostgresPersistenceLayer(db)
        self.config = IdempotencyConfig(event_key_jmespath="key",
                                        payload_validation_jmespath="payload",
                                        expires_after_seconds=expires_after_seconds)

    def run(self, key: str | None, scope: str, payload: dict[str, Any], work: Work,
            context: Any = None) -> tuple[dict[str, Any], bool]:
        """`work(conn)`'s result and whether it was replayed. Without a key the write simply
        runs once, in one transaction."""
        if key is None:
            with self.db.transaction() as conn:
                return work(conn), False
        if not key.strip() or len(key) > MAX_KEY_LENGTH or not key.isprintable():
            raise ApiError(f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} printable characters")
        if context is not None:
            self.config.register_lambda_context(context)
        ran = False

        with ExitStack() as open_transaction:

            def once(request: dict[str, Any]) -> dict[str, Any]:
                nonlocal ran
                ran = True
                transaction = self.db.transaction()
                conn = transaction.__enter__()
                try:
                    result = work(conn)
                except BaseException as err:
                    # roll back (and free the connection) before Powertools deletes the record;
                    # a transaction never swallows the error
                    transaction.__exit__(type(err), err, err.__traceback__)
                    raise
                open_transaction.push(transaction)
                _open_write.set(conn)
                return result

            token = _open_write.set(None)
            try:
                result = idempotent_function(
                    once, data_keyword_argument="request", persistence_store=self.layer,
                    config=self.config,
                )(request={"key": f"{scope}:{key}", "payload": payload})
            except IdempotencyAlreadyInProgressError as err:
                raise Conflict("a request with this Idempotency-Key is still in progress; "
                               "retry in a moment", headers={"Retry-After": "1"}) from err
            except IdempotencyValidationError as err:
                raise Unprocessable("this Idempotency-Key was already used with a different "
                                    "request body; use a new key for a new request") from err
            except IdempotencyPersistenceLayerError as err:
                cause = err.__cause__ or (err.args[1] if len(err.args) > 1 else None)
                if isinstance(cause, ApiError):
                    raise cause from err
                raise ServiceUnavailable("the idempotency store is unavailable; retry") from err
            finally:
                _open_write.reset(token)
        return result, not ran
