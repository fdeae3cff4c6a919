"""What every table family of the catalog is built on (see the package docstring)."""

from __future__ import annotations

import json
from collections.abc import Iterable

from edgesync.sqlite import Database

# `WHERE x IN_IDS` with `ids_arg(ids)`: any number of ids in one bound
# parameter (SQLite limits the number of parameters, not a JSON array's length).
IN_IDS = "IN (SELECT value FROM json_each(?))"


def ids_arg(ids: Iterable[str] | Iterable[int]) -> str:
    return json.dumps(list(ids))


class Tables:
    """One table family's operations, over the catalog's one database.

    A family is a base class of `Catalog`: its public methods are the
    catalog's. Each is one unit of work: one `transaction()`, or one read.
    Statements another family must run inside its own transaction are
    module-level functions taking the `Transaction` (e.g. `images.write_properties`).
    """

    def __init__(self, db: Database) -> None:
        self._db = db
