"""The users API's request and response bodies. Requests are strict (no type coercion) and
refuse unknown fields, so a typo in a field name is a 422 instead of a silently ignored value,
and refuse text PostgreSQL cannot store (NUL, lone surrogates) in any field
(`services.shared.text.RequestModel`)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, StringConstraints

from services.shared.text import RequestModel

Email = Annotated[str, StringConstraints(strip_whitespace=True, min_length=3, max_length=254,
                                         pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")]
DisplayName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1,
                                               max_length=100)]
FileName = Annotated[str, StringConstraints(min_length=1, max_length=200,
                                            pattern=r"^[A-Za-z0-9._-]+$")]
ContentType = Annotated[str, StringConstraints(min_length=3, max_length=100,
                                               pattern=r"^[\w.+-]+/[\w.+-]+$")]


class NewUser(RequestModel):
    email: Email
    display_name: DisplayName | None = None


class User(BaseModel):
    id: int
    email: str
    display_name: str | None
    created_at: datetime


class UserPage(BaseModel):
    items: list[User]
    next_cursor: str | None


class NewUpload(RequestModel):
    filename: FileName
    content_type: ContentType = "application/octet-stream"


class Upload(BaseModel):
    """Where to PUT the file: send `headers` with the request, within `expires_in` seconds."""

    key: str
    upload_url: str
    method: str
    headers: dict[str, str]
    expires_in: int
