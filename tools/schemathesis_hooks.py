"""schemathesis hooks for tools/schemathesis_run.py (loaded through `SCHEMATHESIS_HOOKS`).

Some generated requests get text PostgreSQL cannot store (issue 15) in one of their strings:
a NUL in a body field at any depth, a query parameter or a header, or a lone UTF-16 surrogate
in a body field (JSON `"\\ud800"`; a URL or a header cannot carry one). schemathesis' own
generation produces these too rarely to matter where they hurt: a NUL in a field whose other
constraints (the email pattern) still hold, so the request reaches the INSERT.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import schemathesis
from hypothesis import strategies as st

NUL = "\x00"
SURROGATE = "\ud800"


def _string_paths(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Where the strings are in a JSON-like value (dict keys, list indexes)."""
    if isinstance(value, str):
        yield path
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _string_paths(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _string_paths(item, (*path, index))


def _inserted(value: Any, path: tuple[Any, ...], char: str, at: int) -> Any:
    """A copy of `value` with `char` inserted at index `at` of the string at `path`."""
    if not path:
        return value[:at] + char + value[at:]
    copied = copy.copy(value)
    copied[path[0]] = _inserted(value[path[0]], path[1:], char, at)
    return copied


def _sometimes_unstorable(value: Any, chars: str) -> st.SearchStrategy[Any]:
    """`value` as generated, or with one of `chars` put into one of its strings."""
    paths = list(_string_paths(value))
    if not paths:
        return st.just(value)
    return st.one_of(st.just(value), st.builds(
        lambda path, char, at: _inserted(value, path, char, at),
        st.sampled_from(paths), st.sampled_from(chars), st.integers(0, 40)))


@schemathesis.hook
def flatmap_body(context: Any, body: Any) -> st.SearchStrategy[Any]:
    return _sometimes_unstorable(body, NUL)


@schemathesis.hook
def flatmap_query(context: Any, query: Any) -> st.SearchStrategy[Any]:
    return _sometimes_unstorable(query, NUL)


@schemathesis.hook
def flatmap_headers(context: Any, headers: Any) -> st.SearchStrategy[Any]:
    return _sometimes_unstorable(headers, NUL)
