"""Import orchestration: new imports (glance-direct, web-download, upload) and
copy-image, with the DCN rules (outcome.py says how a task ends).

* Hub first: a new import writes the central store first, then the other
  requested sites (copied from central); central failing fails the import.
  A copy to other sites needs the central copy to exist.
* One task at a time per image (the catalog's import lock, which lapses if
  its holder dies; runner.py renews it); a failed new import leaves the
  image `queued`, with no stores and nothing in staging, ready to be retried.

Every task ends in `_finalize`, both on the normal path and when the hub
recovers unfinished tasks after a crash (recovery.py).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgesync.catalog import Catalog
from edgesync.config import ImportConfig
from edgesync.errors import BadRequest, ChecksumMismatch, Conflict, EdgesyncError, failure_reason
from edgesync.hub.auth import Caller
from edgesync.hub.imports import outcome
from edgesync.hub.imports.jobs import JobBook, job_reason, progress_properties
from edgesync.hub.imports.recovery import Recovery
from edgesync.hub.imports.runner import TaskRunner
from edgesync.hub.policy import Policy
from edgesync.hub.quota import StoredBytesQuota
from edgesync.hub.sites import Sites, VerifiedCopy
from edgesync.hub.staging import Staging
from edgesync.importer import qemu
from edgesync.importer.download import REDACTED, download, redact_uri
from edgesync.importer.inject import properties_to_inject
from edgesync.importer.uri_filter import check_uri
from edgesync.logs import context_field, task_context
from edgesync.metrics import HubMetrics
from edgesync.model import (
    FAILED_IMPORT,
    IMPORT_TASK,
    IMPORTING_TO_STORES,
    Image,
    ImageStatus,
    StoreJob,
    StoreJobState,
    Task,
    TaskStatus,
)
from edgesync.stores.base import Location
from edgesync.transfer.pipeline import FileSource, MeasuredSource

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImportRequest:
    """A checked `POST /v2/images/{id}/import` (hub/api/import_request.py parses it)."""

    method: str
    uri: str | None
    stores: list[str] | None
    all_stores: bool
    must_succeed: bool


def check_against_request(task: Task, checked: VerifiedCopy) -> None:
    """The checked copy is the one the location names, and matches the
    validation data given with it (`task.input`)."""
    # The store reports its own form; only the fsid's case may differ.
    if checked.location_url.lower() != task.input.get("location_url", "").lower():
        raise BadRequest(f"the store reports its copy at {checked.location_url}, not at the location given")
    for key, computed in (("os_hash_value", checked.os_hash_value), ("checksum", checked.checksum)):
        given = task.input.get(key)
        if given and given.lower() != computed:
            raise ChecksumMismatch(f"{key} {given} given in validation_data does not match the copy's "
                                   f"actual {key} {computed}")


def require_formats(image: Image) -> None:
    if not image.disk_format or not image.container_format:
        raise BadRequest(
            f"Image {image.id} needs disk_format and container_format set before it gets data"
        )


class Importer:
    def __init__(self, *, catalog: Catalog, sites: Sites, staging: Staging, config: ImportConfig,
                 metrics: HubMetrics | None = None, quota: StoredBytesQuota | None = None,
                 policy: Policy | None = None) -> None:
        self.catalog = catalog
        self.quota = quota  # None: no quota
        self.policy = policy or Policy()  # Glance's rules (and the DCN ones) unless the hub's file says otherwise
        self.sites = sites
        self.central = sites.central.name
        self.staging = staging
        self.config = config
        self.metrics = metrics or HubMetrics(sites=list(sites))
        self.jobs = JobBook(catalog)
        self.runner = TaskRunner(catalog, lock_ttl_s=config.lock_ttl_s, on_crash=self._crashed)
        # Task id -> web-download URI with its user:password. Only here, in
        # memory: the task record keeps the URI redacted.
        self._source_credentials: dict[str, str] = {}

    # --- accepting requests ---------------------------------------------------

    async def request_import(self, image: Image, caller: Caller, req: ImportRequest) -> Task | None:
        if req.method == "copy-image":
            return await self._request_copy(image, caller, req)
        return await self._request_new(image, caller, req)

    async def _request_new(self, image: Image, caller: Caller, req: ImportRequest) -> Task:
        self.policy.enforce_on_image("modify_image", caller, image)  # Glance's rule for a new import
        require_formats(image)
        if req.method == "web-download":
            assert req.uri is not None  # parse_import_request requires it
            # A source the operator doesn't allow is refused now, with 400 and
            # nothing started; redirects are re-checked as the task follows them.
            check_uri(req.uri, self.config.uri_filter)
        expected = ImageStatus.UPLOADING if req.method == "glance-direct" else ImageStatus.QUEUED
        if image.status != expected:
            hint = "stage data first (PUT /v2/images/{id}/stage)" if req.method == "glance-direct" \
                else "it must be queued (no data yet)"
            raise Conflict(f"Image {image.id} is {image.status.value}; for {req.method} {hint}")
        stores = self._targets_for_new(req)
        staged = self.staging.staged_bytes(image.id) if req.method == "glance-direct" else 0
        await self._enforce_quota(image, staged * len(stores))
        uri = req.uri or ""
        source = {"uri": redact_uri(uri), "disk_format": image.disk_format or ""}
        task = self._new_task(image, caller, req, stores, source)
        if source["uri"] != uri:
            self._source_credentials[task.id] = uri
        await self.catalog.start_task(
            task, lock_ttl_s=self.config.lock_ttl_s, expect_status=[expected],
            image_fields={"status": ImageStatus.IMPORTING},
            image_properties={**progress_properties(task), IMPORT_TASK: task.id,
                              **properties_to_inject(self.config.inject, caller.roles)},
        )
        self.runner.spawn(task, self._run_new(task))
        return task

    def _targets_for_new(self, req: ImportRequest) -> list[str]:
        wanted = self.sites.writable() if req.all_stores else (req.stores or [self.central])
        # Hub first: central is always written, and written first.
        return [self.central] + [s for s in wanted if s != self.central]

    async def _request_copy(self, image: Image, caller: Caller, req: ImportRequest) -> Task | None:
        self.policy.enforce_on_image("copy_image", caller, image)
        if not req.all_stores and not req.stores:
            # Otherwise a task with no store to do is started, and fails.
            raise BadRequest('copy-image needs "stores": [names of the stores to copy to] or "all_stores": true')
        if image.status != ImageStatus.ACTIVE:
            raise Conflict(f"Image {image.id} is {image.status.value}; only active images can be copied")
        if self.central not in image.stores:
            raise Conflict(
                f"Image {image.id} has no copy in the central store '{self.central}' yet; "
                "an image must be copied to central before it can go to other stores (hub first)"
            )
        if req.all_stores:
            stores = [n for n in self.sites.writable() if n not in image.stores]
            if not stores:
                return None  # Glance: nothing left to copy → 202, no task
        else:
            stores = req.stores or []
            for name in stores:
                if name in image.stores:
                    raise BadRequest(f"Image is already present at store '{name}'")
        await self._enforce_quota(image, (image.size or 0) * len(stores))
        return await self._start_copy(image, caller, req, stores, {})

    async def _enforce_quota(self, image: Image, adding_bytes: int) -> None:
        if self.quota is not None:
            await self.quota.enforce(image.owner, adding_bytes=adding_bytes)

    async def copy_to_central(self, image: Image, caller: Caller, source: str) -> Task:
        """An image created at an edge (registered with its copy in `source`)
        goes to central first (hub first); copies to other edges wait for it."""
        req = ImportRequest("copy-image", None, [self.central], False, True)
        return await self._start_copy(image, caller, req, [self.central], {"source": source})

    async def _start_copy(self, image: Image, caller: Caller, req: ImportRequest,
                          stores: list[str], task_input: dict[str, str]) -> Task:
        task = self._new_task(image, caller, req, stores, task_input)
        await self.catalog.start_task(
            task, lock_ttl_s=self.config.lock_ttl_s, expect_status=[ImageStatus.ACTIVE],
            image_properties={**progress_properties(task), IMPORT_TASK: task.id},
        )
        self.runner.spawn(task, self._run_copy(task))
        return task

    async def request_location_import(self, image: Image, caller: Caller, store: str, url: str,
                                      expected: dict[str, str]) -> Task:
        """A location added to a queued image (`POST /v2/images/{id}/locations`,
        or PATCH add `/locations/-`): the copy it names is checked and hashed
        where it is (`expected`: validation data it must match), then the
        image is active in `store`; an edge store's copy goes on to central by
        itself (hub first). Conflict unless the image is queued and free."""
        req = ImportRequest(outcome.LOCATION_IMPORT, None, [store], False, True)
        task = self._new_task(image, caller, req, [store], {"location_url": url, **expected})
        await self.catalog.start_task(
            task, lock_ttl_s=self.config.lock_ttl_s, expect_status=[ImageStatus.QUEUED],
            image_fields={"status": ImageStatus.IMPORTING},
            image_properties={**progress_properties(task), IMPORT_TASK: task.id},
        )
        self.runner.spawn(task, self._run_location_import(task))
        return task

    async def upload(self, image: Image, caller: Caller, chunks: AsyncIterator[bytes],
                     *, store: str | None, expected_size: int | None) -> None:
        """`PUT /v2/images/{id}/file`: data straight in, no conversion; the
        request returns when the image is active (or failed)."""
        self.policy.enforce_on_image("upload_image", caller, image)
        require_formats(image)
        if store is not None and store not in self.sites.writable():
            # Glance answers an unknown x-image-meta-store with 400 (copy-image's unknown store is a 409).
            why = "is read-only" if store in self.sites else "is not one of this hub's stores"
            raise BadRequest(f"x-image-meta-store names store '{store}', which {why}; stores to upload to: "
                             f"{', '.join(self.sites.writable())}")
        req = ImportRequest("upload", None, [store] if store else None, False, True)
        targets = self._targets_for_new(req)
        await self._enforce_quota(image, (expected_size or 0) * len(targets))
        task = self._new_task(image, caller, req, targets, {"disk_format": image.disk_format or ""})
        await self.catalog.start_task(
            task, lock_ttl_s=self.config.lock_ttl_s, expect_status=[ImageStatus.QUEUED],
            image_fields={"status": ImageStatus.SAVING}, image_properties={IMPORT_TASK: task.id},
        )
        try:
            await self.staging.receive(image.id, chunks, expected_size=expected_size,
                                       max_bytes=self.config.max_image_size_bytes)
        except BaseException as exc:
            why = "interrupted before all data arrived" if isinstance(exc, asyncio.CancelledError) else str(exc)
            await self.jobs.fail_all(task, f"upload failed: {why}")
            await self._finalize(task.id)
            raise
        await self.runner.run(task, self._run_new(task))
        failed = await self.catalog.get_task(task.id)
        if failed is not None and failed.status == TaskStatus.FAILURE:
            raise BadRequest(f"Upload of image {image.id} failed: {failed.message}")

    def _new_task(self, image: Image, caller: Caller, req: ImportRequest,
                  stores: list[str], task_input: dict[str, str]) -> Task:
        task_id = str(uuid.uuid4())
        return Task(
            id=task_id, image_id=image.id, owner=image.owner, user_id=caller.user,
            method=req.method, stores=stores, all_stores_must_succeed=req.must_succeed,
            status=TaskStatus.PROCESSING, input=task_input, request_id=context_field("request_id"),
            jobs=[StoreJob(task_id, s) for s in stores],
        )

    # --- running --------------------------------------------------------------

    async def _run_new(self, task: Task) -> None:
        image = await self.catalog.require_image(task.image_id)
        try:
            await self._write_central(task, image)
        except Exception as exc:  # an untranslated store error too: say which store failed
            if not isinstance(exc, EdgesyncError):
                log.exception("task %s: writing central failed", task.id)
            await self.jobs.fail_all(task, f"central store '{self.central}' failed: {job_reason(exc)}")
            await self._finalize(task.id)
            return
        finally:
            self.staging.discard(image.id)
        if outcome.active_once_central_has_it(task):
            await self.catalog.update_image(image.id, fields={"status": ImageStatus.ACTIVE})
        image = await self.catalog.require_image(image.id)
        await self._copy_to(task, image, [s for s in task.stores if s != self.central])
        await self._finalize(task.id)

    async def _run_copy(self, task: Task) -> None:
        image = await self.catalog.require_image(task.image_id)
        await self._copy_to(task, image, task.stores)
        await self._finalize(task.id)

    async def _run_location_import(self, task: Task) -> None:
        store = task.stores[0]
        await self.jobs.set(task, store, StoreJobState.RUNNING)
        try:
            checked = await self.sites[store].verify(task.image_id, job_id=f"{task.id}-{store}")
            check_against_request(task, checked)
        except Exception as exc:  # any failure fails the location, never the hub
            reason = job_reason(exc)
            log.warning("location of image %s in %s refused: %s", task.image_id, store, reason,
                        exc_info=not isinstance(exc, EdgesyncError))
            await self.jobs.set(task, store, StoreJobState.FAILED, reason=reason)
        else:
            await self.catalog.update_image(task.image_id, fields={
                "size": checked.size, "virtual_size": checked.size, "checksum": checked.checksum,
                "os_hash_algo": "sha512", "os_hash_value": checked.os_hash_value})
            if checked.manifest is not None:
                await self.catalog.put_manifest(task.image_id, checked.manifest)
            await self.jobs.set(task, store, StoreJobState.DONE, location=Location(store, checked.location_url))
        await self._finalize(task.id)

    async def _then_to_central(self, task: Task) -> None:
        """Hub first: an image that became active in an edge store through its
        location is copied to central at once (also when recovery finished it)."""
        image = await self.catalog.get_image(task.image_id)
        if image is None or self.central in image.stores:
            return
        source = task.stores[0]
        try:
            await self.copy_to_central(image, Caller(task.user_id or "", task.owner or "", ()), source)
        except EdgesyncError as exc:
            log.error("image %s: its copy from %s to central could not start: %s", image.id, source, exc.message)

    async def _resume(self, task: Task, stores: list[str]) -> None:
        """A task recovery found under way at sites whose copies outlive the hub."""
        image = await self.catalog.require_image(task.image_id)
        await self._copy_to(task, image, stores, resume=True)
        await self._finalize(task.id)

    async def _crashed(self, task: Task, exc: Exception) -> None:
        """The runner's handler for a task whose work raised (a bug)."""
        await self.jobs.fail_all(task, f"internal error: {exc}")
        await self._finalize(task.id)

    async def _write_central(self, task: Task, image: Image) -> None:
        await self.jobs.set(task, self.central, StoreJobState.RUNNING)
        path, fields = await self._prepare_source(task, image)
        reader = FileSource(path)
        data = MeasuredSource(reader)
        try:
            digest, location = await self.sites.central.ingest(
                image.id, data, self.jobs.progress_recorder(task, self.central))
        finally:
            reader.close()
        await self.catalog.put_manifest(image.id, digest.manifest())
        await self.catalog.update_image(image.id, fields={
            **fields, "size": digest.size, "checksum": digest.checksum,
            "os_hash_algo": "sha512", "os_hash_value": digest.os_hash_value,
        })
        await self.jobs.set(task, self.central, StoreJobState.DONE, bytes_done=data.data_bytes,
                            bytes_total=data.data_bytes, location=location)

    def _source_uri(self, task: Task) -> str:
        """The URI to download, with the credentials the record doesn't keep."""
        uri = self._source_credentials.pop(task.id, None)
        if uri is not None:
            return uri
        recorded = str(task.input["uri"])
        if f"//{REDACTED}@" in recorded:
            raise BadRequest(f"the credentials of {recorded} are not stored, so they did not survive a hub "
                             "restart; import the image again")
        return recorded

    async def _prepare_source(self, task: Task, image: Image) -> tuple[Path, dict[str, Any]]:
        """Fetch (web-download), inspect, vet and convert the staged data.
        Returns the RAW file to store and the image fields it implies."""
        staged = self.staging.path(image.id)
        if task.method == "web-download":
            await download(self._source_uri(task), staged, rules=self.config.uri_filter,
                           max_bytes=self.config.max_image_size_bytes,
                           timeout_s=self.config.web_download_timeout_s)
        declared = image.disk_format or "raw"
        info = await qemu.inspect(staged)
        qemu.check_safe(info, declared_format=declared, allowed_formats=self.config.disk_formats,
                        max_virtual_size=self.config.max_image_size_bytes)
        fields: dict[str, Any] = {"virtual_size": info.virtual_size}
        if task.method == "upload" or not self.config.convert_to_raw or declared in ("raw", "iso"):
            return staged, fields
        converted = self.staging.converted_path(image.id)
        await qemu.convert_to_raw(staged, declared, str(converted))
        return converted, {**fields, "disk_format": "raw"}

    async def _copy_to(self, task: Task, image: Image, stores: list[str], *, resume: bool = False) -> None:
        # Each copy's lines carry its site.
        await asyncio.gather(*(asyncio.create_task(self._copy_one(task, image, s, resume=resume),
                                                   context=task_context(site=s))
                               for s in stores))

    async def _copy_one(self, task: Task, image: Image, store: str, *, resume: bool = False) -> None:
        await self.jobs.set(task, store, StoreJobState.RUNNING)
        with self.metrics.copy(store) as timing:
            try:
                source = self.sites[task.input.get("source") or self.central]
                progress = self.jobs.progress_recorder(task, store)
                location = await self.sites[store].replicate(
                    image, source, progress, job_id=f"{task.id}-{store}", resume=resume)
            except Exception as exc:
                # Any failure fails this store only: letting one escape would end the
                # gather while sibling copies still run, and finalize under them.
                timing.failed(failure_reason(exc))
                reason = job_reason(exc)
                log.warning("copy of %s to %s failed: %s", image.id, store, reason,
                            exc_info=not isinstance(exc, EdgesyncError))
                await self.jobs.set(task, store, StoreJobState.FAILED, reason=reason)
                return
        await self.jobs.copied(task, store, location, progress)

    # --- outcome --------------------------------------------------------------

    async def _finalize(self, task_id: str) -> None:
        """Decide the outcome of a task whose stores are all finished (the
        allow-failure rule), roll back if it says so, and release the image."""
        task = await self.catalog.get_task(task_id)
        assert task is not None
        image = await self.catalog.get_image(task.image_id)
        decided = outcome.decide(task, image, central=self.central)
        await self._roll_back(task, decided.roll_back)
        if outcome.is_new_import(task) and image is not None:
            self.staging.discard(image.id)
        await self.catalog.finish_task(
            task.id, decided.status, decided.message,
            image_fields=decided.image_fields,
            set_properties={IMPORTING_TO_STORES: "", FAILED_IMPORT: ",".join(decided.failed)},
            remove_properties=[IMPORT_TASK],
        )
        log.info("task %s on image %s: %s", task.id, task.image_id, decided.message)
        if outcome.is_location_import(task) and decided.succeeded:
            await self._then_to_central(task)

    async def _roll_back(self, task: Task, stores: list[str]) -> None:
        """Remove every copy this task wrote (must-succeed failed, or a new
        import that never reached central)."""
        for store in stores:
            try:
                await self.sites[store].remove(task.image_id)
            except Exception as exc:  # must not stop the task from finishing and unlocking
                log.error("rollback of %s in %s failed: %s", task.image_id, store, job_reason(exc),
                          exc_info=not isinstance(exc, EdgesyncError))
            await self.catalog.remove_location(task.image_id, store)
            await self.jobs.set(task, store, StoreJobState.ROLLED_BACK, reason=outcome.ROLLED_BACK_REASON)

    # --- lifecycle ------------------------------------------------------------

    async def recover(self) -> None:
        """After a restart: finish every task the last run left open (recovery.py)."""
        recovery = Recovery(catalog=self.catalog, sites=self.sites, staging=self.staging, jobs=self.jobs,
                            lock_ttl_s=self.config.lock_ttl_s)
        await recovery.run(finish=self._finalize,
                           go_on=lambda task, stores: self.runner.spawn(task, self._resume(task, stores)))

    async def shutdown(self, grace_s: float = 5.0) -> None:
        await self.runner.shutdown(grace_s)

    async def wait_idle(self) -> None:
        """Tests and benchmarks: wait until no task is running."""
        await self.runner.wait_idle()
