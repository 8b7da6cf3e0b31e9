"""The orders API's request and response bodies (strict, unknown fields refused)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from services.shared.http import BIGINT_MAX, INT_MAX


class NewOrder(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

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
