"""Text PostgreSQL can store, checked where input is validated so that it is a 422 naming the
field instead of a 500 from the driver.

Two kinds of Python `str` are valid input to pydantic (strict or not) and still cannot reach
the database:

- a NUL character (U+0000, JSON `"\\u0000"`): PostgreSQL `text`/`varchar` cannot contain it,
  and psycopg raises `DataError` when it is sent;
- a lone UTF-16 surrogate (U+D800–U+DFFF, JSON `"\\ud800"`): `json.loads` decodes it, but it is
  not Unicode text and cannot be encoded as UTF-8 (`UnicodeEncodeError`).

`RequestModel` is the base of every request body: it checks every string of every field,
nested ones too, so a field added later cannot forget it. `Text` is the same check as an
annotated type for parameters (query strings, headers, path segments) declared as `str`.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, field_validator, model_validator
from pydantic_core import PydanticCustomError

UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
ERROR_TYPE = "unstorable_text"


def unstorable(text: str) -> str | None:
    """Why PostgreSQL cannot store `text`, or None when it can."""
    found = UNSTORABLE.search(text)
    if found is None:
        return None
    char, where = found.group(), found.start()
    if char == "\x00":
        return (f"contains a NUL character (\\u0000) at index {where}; PostgreSQL text cannot "
                "store it")
    return (f"contains a lone UTF-16 surrogate (\\u{ord(char):04x}) at index {where}; it is "
            "not valid Unicode text")


def refuse_unstorable(value: Any) -> Any:
    """`value` unchanged, or a pydantic error when a string in it (dict keys too, at any depth)
    cannot be stored. Other types pass through to the field's own validation. A loop, not a
    recursion: a deeply nested body must not end in a RecursionError (a 500)."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            reason = unstorable(item)
            if reason:
                raise PydanticCustomError(ERROR_TYPE, reason)
        elif isinstance(item, dict):
            pending += [*item.keys(), *item.values()]
        elif isinstance(item, list | tuple):
            pending += item
    return value


# A str parameter PostgreSQL can store: `Annotated[Text | None, Query(...)]`.
Text = Annotated[str, BeforeValidator(refuse_unstorable)]


class RequestModel(BaseModel):
    """A request body: strict (nothing coerced), unknown fields refused, and no string in any
    field that PostgreSQL cannot store."""

    model_config = ConfigDict(extra="forbid", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _storable_names(cls, data: Any) -> Any:
        """Field names first: an unknown one is refused anyway, but a lone surrogate in it
        would otherwise get pydantic's vaguer "unable to parse raw data as a unicode string"."""
        for name in data if isinstance(data, dict) else ():
            reason = unstorable(name) if isinstance(name, str) else None
            if reason:
                raise PydanticCustomError(ERROR_TYPE, "field name {name} " + reason,
                                          {"name": shown(name)})
        return data

    @field_validator("*", mode="before")
    @classmethod
    def _storable(cls, value: Any) -> Any:
        return refuse_unstorable(value)


def shown(text: str) -> str:
    """`text` for an error message: characters that are not printable appear as escapes."""
    return "".join(c if c.isprintable() else
                   f"\\u{ord(c):04x}" if ord(c) <= 0xFFFF else f"\\U{ord(c):08x}" for c in text)
