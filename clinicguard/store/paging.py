"""Keyset (cursor) paging, for the clinic data and the audit trail alike: stable under
inserts, no OFFSET scans, and the cursor carries only a timestamp and a row's key (an id
or a sequence number, never a name or other personal data).

Rows are ordered by (time, key); a page is fetched with one row more than its limit, to
know whether another page exists, and the cursor names the last row of the page.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Select, and_, or_

from clinicguard.core.errors import FieldError, ValidationFailed

DEFAULT_LIMIT = 50
MAX_LIMIT = 200
Row = TypeVar("Row")
Key = TypeVar("Key", uuid.UUID, int)
Query = TypeVar("Query", bound="Select[Any]")


def uuid_key(value: object) -> uuid.UUID:
    """A cursor's key that is a row id (ValueError otherwise)."""
    if not isinstance(value, str):
        raise ValueError("not an id")
    return uuid.UUID(value)


def _any_time(_moment: datetime) -> bool:
    return True


def encode_cursor(moment: datetime, key: uuid.UUID | int) -> str:
    raw = [moment.astimezone(UTC).isoformat(), key if isinstance(key, int) else str(key)]
    encoded = base64.urlsafe_b64encode(json.dumps(raw, separators=(",", ":")).encode())
    return encoded.decode().rstrip("=")


def decode_cursor(
    cursor: str,
    parse_key: Callable[[object], Key],
    valid_time: Callable[[datetime], bool] = _any_time,
) -> tuple[datetime, Key]:
    """The cursor's position in UTC; ValidationFailed (422) for anything this server did
    not issue (``parse_key`` and ``valid_time`` say what a key and a time may be)."""
    invalid = ValidationFailed(
        errors=[FieldError("query.cursor", "Not a cursor this server issued.")]
    )
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        value = json.loads(base64.urlsafe_b64decode(padded.encode()))
        if not isinstance(value, list) or len(value) != 2 or not isinstance(value[0], str):
            raise invalid
        when = datetime.fromisoformat(value[0])
        if when.tzinfo is None or not valid_time(when):
            raise invalid
        return when.astimezone(UTC), parse_key(value[1])
    except (ValueError, TypeError, OverflowError, binascii.Error, UnicodeDecodeError) as exc:
        raise invalid from exc


def page_query(
    query: Query,
    time_column: Any,
    key_column: Any,
    cursor: str | None,
    limit: int,
    *,
    parse_key: Callable[[object], Key],
    valid_time: Callable[[datetime], bool] = _any_time,
    newest_first: bool = False,
) -> Query:
    """``query`` ordered by (time, key), after ``cursor``, one row more than ``limit``."""
    if cursor is not None:
        moment, key = decode_cursor(cursor, parse_key, valid_time)
        after: ColumnElement[bool]
        if newest_first:
            after = or_(time_column < moment, and_(time_column == moment, key_column < key))
        else:
            after = or_(time_column > moment, and_(time_column == moment, key_column > key))
        query = query.where(after)
    order = (time_column.desc(), key_column.desc()) if newest_first else (time_column, key_column)
    return query.order_by(*order).limit(limit + 1)


def split_page(
    rows: Sequence[Row], limit: int, position: Callable[[Row], tuple[datetime, Any]]
) -> tuple[list[Row], str | None]:
    """The page's rows and the next page's cursor (None on the last page); ``position``
    gives a row's (time, key)."""
    items = list(rows[:limit])
    if len(rows) <= limit or not items:
        return items, None
    return items, encode_cursor(*position(items[-1]))


def in_utc(moment: datetime | None, field: str) -> datetime | None:
    """``moment`` in UTC, or 422 naming ``field`` when it has no UTC form (a time at the
    very edge of the calendar with an offset that pushes it past year 1 or 9999)."""
    if moment is None:
        return None
    try:
        return moment.astimezone(UTC)
    except OverflowError as exc:
        raise ValidationFailed(errors=[FieldError(field, "Out of range.")]) from exc
