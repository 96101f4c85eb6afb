"""FastAPI providers for the storage the app wires in (``app.state``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from clinicguard.store.db import Database
from clinicguard.store.interfaces import KeyValueStore


def get_database(request: Request) -> Database:
    db: Database = request.app.state.database
    return db


def get_kv(request: Request) -> KeyValueStore:
    kv: KeyValueStore = request.app.state.kv
    return kv


DatabaseDep = Annotated[Database, Depends(get_database)]
KeyValueDep = Annotated[KeyValueStore, Depends(get_kv)]
