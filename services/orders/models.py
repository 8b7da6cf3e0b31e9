"""The orders API's request and response bodies (strict, unknown fields and text PostgreSQL
cannot store refused: `services.shared.text.RequestModel`)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, Field, StringConstraints

from services.shared.http import BIGINT_MAX, INT_MAX
from services.shared.text import RequestModel


class NewOrder(RequestModel):
    user_id: Annotated[int, Field(gt=0, le=BIGINT_MAX)]
    total_cents: Annotated[int, Field(ge=0, le=INT_MAX)]
    currency: Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")] = "EUR"


class Order(BaseModel):
    id: int
    user_id: int
    total_cents: int
    currency: str
    created_at: datetime


class OrderPage(BaseModel):
    items: list[Order]
    next_cursor: str | None
