"""The catalog: the hub's only source of truth, in SQLite (through edgesync.sqlite).

This package is the only place with the catalog's SQL. Every public method
is one atomic unit of work; methods that change several tables (starting a
task together with its lock, its store jobs and its outbox commands) run in
one transaction, so a crash never leaves half of them.

How it is cut: one module per table family, each a `Tables` subclass whose
methods are the catalog's, and `Catalog` below, the facade, is those
families over one `Database`:

- `images`: images with their properties, tags, members and locations
  (and the statements other families run on them: status checks, fields,
  properties, locations);
- `tasks`: tasks, their store jobs and the per-image import lock;
- `outbox`: commands for the agents, written with the state they announce;
- `pending_deletes`: deletes waiting for an edge site's agent;
- `manifests`: each image's chunk manifest, named by its digest;
- `members`: image members (the projects a shared image is shared with);
- `adoptions`: images adopted from another image service (Glance) and
  their copies adopted in place;
- `usage`: a project's image counts for `GET /v2/info/usage`;
- `metadefs` and `glance_tasks` (Glance's metadefs; what `POST /v2/tasks`
  adds to a task, and `GET /v2/tasks`): wrappers, `Metadefs(catalog)` and
  `GlanceTasks(catalog)`, over `catalog.database` (see below);
- `rows`: row mapping, records to and from rows; `image_query`: the
  `GET /v2/images` filters; `schema`: the migrations (edgesync.sqlite runs them).

Adding a table family (metadefs, image members, chunk manifests, …):

1. a migration appended to `schema.MIGRATIONS` (never edit a released one);
2. a module `catalog/<family>.py` with `class <Family>Tables(Tables)`: its
   public methods, each one `self._db.transaction()` or one read, and, for
   statements another family must run inside its own transaction, functions
   taking the `Transaction` (as `images.write_properties`); its record types
   and their row mapping beside it or in `rows`;
3. one line: the class added to `Catalog`'s bases.

Method names are the catalog's API and stay unique across families (a unit
test checks it), so a family never hides another's method. A family whose
verbs only make sense in its own namespace (`get`, `list`, `items`) is a
wrapper instead, built from the catalog and using `catalog.database` and the
other families' statement functions, never their private parts. A family imports
another's statement functions, never its class; `images` and `outbox` import
no other family.
"""

from __future__ import annotations

from pathlib import Path

from edgesync.catalog.adoptions import AdoptedCopy, Adoption, AdoptionTables
from edgesync.catalog.image_query import ImageQuery
from edgesync.catalog.images import ImageTables
from edgesync.catalog.manifests import ManifestTables
from edgesync.catalog.members import MemberTables
from edgesync.catalog.outbox import OutboxTables
from edgesync.catalog.pending_deletes import PendingDeleteTables
from edgesync.catalog.rows import SORTABLE, OutboxMessage, PendingDelete
from edgesync.catalog.schema import CATALOG, CatalogError
from edgesync.catalog.tasks import TaskTables
from edgesync.catalog.usage import UsageTables
from edgesync.sqlite import Database

__all__ = ["SORTABLE", "AdoptedCopy", "Adoption", "Catalog", "CatalogError", "ImageQuery", "OutboxMessage",
           "PendingDelete"]


class Catalog(ImageTables, TaskTables, OutboxTables, PendingDeleteTables, ManifestTables, MemberTables,
              AdoptionTables, UsageTables):
    """Every table family over the hub's one catalog database."""

    @classmethod
    async def open(cls, path: Path) -> Catalog:
        return cls(await Database.open(path, CATALOG))

    async def close(self) -> None:
        await self._db.close()

    async def schema_version(self) -> int:
        return await self._db.version()

    @property
    def database(self) -> Database:
        """For a family that wraps the catalog instead of being a base (see above)."""
        return self._db
