"""Imports and copies of images between sites, by concern: `importer` (the
orchestration), `outcome` (how a task ends: pure rules), `jobs` (store jobs
in the catalog), `runner` (running a task under its renewed lock) and
`recovery` (finishing what a dead hub left open). Requests are parsed in
the API layer (hub/api/import_request.py)."""

from __future__ import annotations

from edgesync.hub.imports.importer import Importer, ImportRequest

__all__ = ["ImportRequest", "Importer"]
