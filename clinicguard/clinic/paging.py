"""Keyset (cursor) paging: stable under inserts, no OFFSET scans, and the cursor carries
only a timestamp and an id (never a name or other personal data)."""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Select, and_, or_
from sqlalchemy.orm import InstrumentedAttribute

from clinicguard.core.errors import FieldError, ValidationFailed

DEFAULT_LIMIT = 50
MAX_LIMIT = 200
Row = TypeVar("Row")


def encode_cursor(moment: datetime, row_id: uuid.UUID) -> str:
    raw = json.dumps([moment.isoformat(), str(row_id)], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    invalid = ValidationFailed(
        errors=[FieldError("query.cursor", "Not a cursor this server issued.")]
    )
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        moment, row_id = json.loads(base64.urlsafe_b64decode(padded.encode()))
        if not isinstance(moment, str) or not isinstance(row_id, str):
            raise invalid
        when = datetime.fromisoformat(moment)
        if when.tzinfo is None:
            raise invalid
        return when.astimezone(UTC), uuid.UUID(row_id)
    except (ValueError, TypeError, OverflowError, binascii.Error, UnicodeDecodeError) as exc:
        raise invalid from exc


def in_utc(moment: datetime | None, field: str) -> datetime | None:
    """``moment`` in UTC, or 422 naming ``field`` when it has no UTC form (a time at the
    very edge of the calendar with an offset that pushes it past year 1 or 9999)."""
    if moment is None:
        return None
    try:
        return moment.astimezone(UTC)
    except OverflowError as exc:
        raise ValidationFailed(errors=[FieldError(field, "Out of range.")]) from exc


def page_query(
    query: Select[Any],
    time_column: InstrumentedAttribute[datetime],
    id_column: InstrumentedAttribute[uuid.UUID],
    cursor: str | None,
    limit: int,
    *,
    newest_first: bool = False,
) -> Select[Any]:
    """``query`` ordered by (time, id), after ``cursor``, one row more than ``limit`` (to
    know whether another page exists)."""
    if cursor is not None:
        moment, row_id = decode_cursor(cursor)
        after: ColumnElement[bool]
        if newest_first:
            after = or_(time_column < moment, and_(time_column == moment, id_column < row_id))
        else:
            after = or_(time_column > moment, and_(time_column == moment, id_column > row_id))
        query = query.where(after)
    order = (time_column.desc(), id_column.desc()) if newest_first else (time_column, id_column)
    return query.order_by(*order).limit(limit + 1)


def split_page(
    rows: Sequence[Row], limit: int, key: tuple[str, str]
) -> tuple[list[Row], str | None]:
    """The page's rows and the cursor of the next page (None on the last page)."""
    items = list(rows[:limit])
    if len(rows) <= limit or not items:
        return items, None
    last = items[-1]
    return items, encode_cursor(getattr(last, key[0]), getattr(last, key[1]))
