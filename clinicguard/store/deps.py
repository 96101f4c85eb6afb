"""FastAPI providers for the storage the app wires in (``app.state``)."""

# Providers are async (they only read app.state): a plain `def` dependency would run in
# the threadpool, a thread hop on every request.

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from clinicguard.store.db import Database
from clinicguard.store.interfaces import KeyValueStore


async def get_database(request: Request) -> Database:
    db: Database = request.app.state.database
    return db


async def get_kv(request: Request) -> KeyValueStore:
    kv: KeyValueStore = request.app.state.kv
    return kv


DatabaseDep = Annotated[Database, Depends(get_database)]
KeyValueDep = Annotated[KeyValueStore, Depends(get_kv)]
