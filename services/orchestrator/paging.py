"""Pages of a list answer (AIP-158): ``page_size``, an opaque ``page_token``, ``next_page_token``.

Contract
--------
``page(items, key, page_size, page_token)`` returns ``(the page, next token)``
of ``items`` sorted by ``key`` (a string unique per item: a run id, a client
name). ``page_size`` 0 means ``DEFAULT_PAGE_SIZE``; above ``MAX_PAGE_SIZE`` it
is capped. The token names the last key of the previous page (URL-safe
base64 of a small JSON object), so a page stays correct when items are
added or removed between calls; the next token is empty on the last page.
:class:`PageError` names the request field (``page_size``, ``page_token``)
and what is wrong; the servicer turns it into INVALID_ARGUMENT.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from typing import TypeVar

__all__ = ["DEFAULT_PAGE_SIZE", "MAX_PAGE_SIZE", "PageError", "page"]

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
T = TypeVar("T")


class PageError(ValueError):
    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field, self.problem = field, problem


def _token(after: str) -> str:
    return base64.urlsafe_b64encode(json.dumps({"after": after}).encode()).decode().rstrip("=")


def _after(token: str) -> str:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        after = json.loads(raw)["after"]
    except (binascii.Error, ValueError, KeyError, TypeError) as err:
        raise PageError("page_token", f"not a token this API gave ({type(err).__name__}); start without one") from None
    if not isinstance(after, str):
        raise PageError("page_token", "not a token this API gave; start without one")
    return after


def page(items: Sequence[T], key: Callable[[T], str], page_size: int, page_token: str) -> tuple[list[T], str]:
    """One page of ``items`` in ``key`` order and the token of the next (empty: none); see the module docstring."""
    if page_size < 0:
        raise PageError("page_size", f"got {page_size}, expected 0 (the default, {DEFAULT_PAGE_SIZE}) or more")
    size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    ordered = sorted(items, key=key)
    if page_token:
        after = _after(page_token)
        ordered = [item for item in ordered if key(item) > after]
    chosen = ordered[:size]
    return chosen, (_token(key(chosen[-1])) if len(ordered) > size else "")
