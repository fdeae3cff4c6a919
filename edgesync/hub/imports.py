"""Import orchestration: new imports (glance-direct, web-download, upload) and
copy-image, with the DCN rules.

* Hub first: a new import writes the central store first, then the other
  requested stores (copied from central); central failing fails the import.
  A copy to other stores needs the central copy to exist.
* allow-failure: `all_stores_must_succeed` false → the image is active after
  the first store succeeds and failures are listed; true → active only when
  all succeed, otherwise every store this task wrote is rolled back.
* One task at a time per image (the catalog's import lock, which lapses if
  its holder dies); a failed new import leaves the image `queued`, with no
  stores and nothing in staging, ready to be retried.

Every task ends in `_finalize`, both on the normal path and when the hub
recovers unfinished tasks after a crash, so the outcome rules live in one place.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgesync.catalog import Catalog, ImageQuery
from edgesync.config import ImportConfig
from edgesync.errors import BadRequest, Conflict, EdgesyncError, failure_reason
from edgesync.hub.auth import Caller, require_owner_or_admin
from edgesync.hub.sites import Sites
from edgesync.hub.staging import Staging
from edgesync.importer import qemu
from edgesync.importer.download import download
from edgesync.importer.inject import properties_to_inject
from edgesync.importer.uri_filter import check_uri
from edgesync.logs import context_field, log_context, task_context
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
from edgesync.transfer.pipeline import CopyProgressFn, FileSource, MeasuredSource

log = logging.getLogger(__name__)

NEW_IMPORT_METHODS = ("glance-direct", "web-download", "upload")
PROGRESS_INTERVAL_S = 1.0
HASH_FIELDS_CLEARED = {
    "size": None, "virtual_size": None, "checksum": None,
    "os_hash_algo": None, "os_hash_value": None,
}


@dataclass(frozen=True)
class ImportRequest:
    method: str
    uri: str | None
    stores: list[str] | None
    all_stores: bool
    must_succeed: bool


def parse_import_request(body: Any, known_stores: list[str], enabled: tuple[str, ...]) -> ImportRequest:
    """Validate a `POST /v2/images/{id}/import` body (400 / 409 as Glance)."""
    if not isinstance(body, dict) or not isinstance(body.get("method"), dict):
        raise BadRequest('The import body needs "method": {"name": …}')
    method = body["method"].get("name")
    if method not in enabled:
        raise BadRequest(f"Import method {method!r} is not available; use one of {', '.join(enabled)}")
    uri = body["method"].get("uri")
    if method == "web-download" and not isinstance(uri, str):
        raise BadRequest('web-download needs "method": {"name": "web-download", "uri": "http://…"}')
    stores, all_stores = body.get("stores"), body.get("all_stores", False)
    must_succeed = body.get("all_stores_must_succeed", True)
    if not isinstance(all_stores, bool) or not isinstance(must_succeed, bool):
        raise BadRequest("all_stores and all_stores_must_succeed must be true or false")
    if stores is not None and all_stores:
        raise BadRequest("Give either stores or all_stores, not both")
    if stores is not None:
        if not isinstance(stores, list) or not stores or not all(isinstance(s, str) for s in stores):
            raise BadRequest("stores must be a non-empty list of store names")
        for name in stores:
            if name not in known_stores:
                raise Conflict(f"Unknown store '{name}'; known stores: {', '.join(known_stores)}")
        stores = list(dict.fromkeys(stores))
    return ImportRequest(method, uri, stores, all_stores, must_succeed)


def _reason(exc: Exception) -> str:
    """A failure as a store job's reason; a store error that escaped
    translation into edgesync's family still says what happened."""
    if isinstance(exc, EdgesyncError):
        return exc.message
    return f"{type(exc).__name__}: {exc}"


def require_formats(image: Image) -> None:
    if not image.disk_format or not image.container_format:
        raise BadRequest(
            f"Image {image.id} needs disk_format and container_format set before it gets data"
        )


class Importer:
    def __init__(
        self,
        *,
        catalog: Catalog,
        sites: Sites,
        staging: Staging,
        config: ImportConfig,
        metrics: HubMetrics | None = None,
    ) -> None:
        self.catalog = catalog
        self.sites = sites
        self.central = sites.central.name
        self.staging = staging
        self.config = config
        self.metrics = metrics or HubMetrics(sites=list(sites))
        self._running: dict[str, asyncio.Task[None]] = {}

    # --- accepting requests ---------------------------------------------------

    async def request_import(self, image: Image, caller: Caller, body: Any) -> Task | None:
        req = parse_import_request(body, list(self.sites), self.config.enabled_methods)
        if req.method == "copy-image":
            return await self._request_copy(image, caller, req)
        return await self._request_new(image, caller, req)

    async def _request_new(self, image: Image, caller: Caller, req: ImportRequest) -> Task:
        require_owner_or_admin(caller, image, "import data into it")
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
        source = {"uri": req.uri or "", "disk_format": image.disk_format or ""}
        task = self._new_task(image, caller, req, stores, source)
        await self.catalog.start_task(
            task, lock_ttl_s=self.config.lock_ttl_s, expect_status=[expected],
            image_fields={"status": ImageStatus.IMPORTING},
            image_properties={**self._progress(task), IMPORT_TASK: task.id,
                              **properties_to_inject(self.config.inject, caller.roles)},
        )
        self._spawn(task, self._run_new(task))
        return task

    def _targets_for_new(self, req: ImportRequest) -> list[str]:
        wanted = self.sites.writable() if req.all_stores else (req.stores or [self.central])
        # Hub first: central is always written, and written first.
        return [self.central] + [s for s in wanted if s != self.central]

    async def _request_copy(self, image: Image, caller: Caller, req: ImportRequest) -> Task | None:
        require_owner_or_admin(caller, image, "copy it to other stores")
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
        task = self._new_task(image, caller, req, stores, {})
        await self.catalog.start_task(
            task, lock_ttl_s=self.config.lock_ttl_s, expect_status=[ImageStatus.ACTIVE],
            image_properties={**self._progress(task), IMPORT_TASK: task.id},
        )
        self._spawn(task, self._run_copy(task))
        return task

    async def copy_to_central(self, image: Image, caller: Caller, source: str) -> Task:
        """An image created at an edge (registered with its copy in `source`)
        goes to central first (hub first); copies to other edges wait for it."""
        req = ImportRequest("copy-image", None, [self.central], False, True)
        task = self._new_task(image, caller, req, [self.central], {"source": source})
        await self.catalog.start_task(
            task, lock_ttl_s=self.config.lock_ttl_s, expect_status=[ImageStatus.ACTIVE],
            image_properties={**self._progress(task), IMPORT_TASK: task.id},
        )
        self._spawn(task, self._run_copy(task))
        return task

    async def upload(self, image: Image, caller: Caller, chunks: AsyncIterator[bytes],
                     *, store: str | None, expected_size: int | None) -> None:
        """`PUT /v2/images/{id}/file`: data straight in, no conversion; the
        request returns when the image is active (or failed)."""
        require_owner_or_admin(caller, image, "upload data to it")
        require_formats(image)
        if store is not None and store not in self.sites:
            raise Conflict(f"Unknown store '{store}'; known stores: {', '.join(self.sites)}")
        req = ImportRequest("upload", None, [store] if store else None, False, True)
        task = self._new_task(image, caller, req, self._targets_for_new(req), {"disk_format": image.disk_format or ""})
        await self.catalog.start_task(
            task, lock_ttl_s=self.config.lock_ttl_s, expect_status=[ImageStatus.QUEUED],
            image_fields={"status": ImageStatus.SAVING}, image_properties={IMPORT_TASK: task.id},
        )
        try:
            await self.staging.receive(image.id, chunks, expected_size=expected_size,
                                       max_bytes=self.config.max_image_size_bytes)
        except BaseException as exc:
            why = "interrupted before all data arrived" if isinstance(exc, asyncio.CancelledError) else str(exc)
            await self._fail_all(task, f"upload failed: {why}")
            await self._finalize(task.id)
            raise
        await self._with_lock_renewal(task, self._run_new(task))
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

    def _spawn(self, task: Task, work: Awaitable[None]) -> None:
        runner = asyncio.create_task(self._with_lock_renewal(task, work), name=f"task-{task.id}")
        self._running[task.id] = runner
        runner.add_done_callback(lambda _: self._running.pop(task.id, None))

    async def _with_lock_renewal(self, task: Task, work: Awaitable[None]) -> None:
        with log_context(task_id=task.id, image_id=task.image_id):
            await self._run_with_lock_renewal(task, work)

    async def _run_with_lock_renewal(self, task: Task, work: Awaitable[None]) -> None:
        renewer = asyncio.create_task(self._renew_lock(task), name=f"lock-{task.id}")
        try:
            await work
        except asyncio.CancelledError:
            raise  # shutdown: the next start's recovery finishes this task
        except Exception as exc:  # a bug must not leave the image locked
            log.exception("task %s crashed", task.id)
            await self._fail_all(task, f"internal error: {exc}")
            await self._finalize(task.id)
        finally:
            renewer.cancel()

    async def _renew_lock(self, task: Task) -> None:
        while True:
            await asyncio.sleep(self.config.lock_ttl_s / 3)
            if not await self.catalog.renew_lock(task.image_id, task.id, self.config.lock_ttl_s):
                log.warning("task %s lost the lock on image %s", task.id, task.image_id)
                return

    async def _run_new(self, task: Task) -> None:
        image = await self.catalog.require_image(task.image_id)
        try:
            await self._write_central(task, image)
        except Exception as exc:  # an untranslated store error too: say which store failed
            if not isinstance(exc, EdgesyncError):
                log.exception("task %s: writing central failed", task.id)
            await self._fail_all(task, f"central store '{self.central}' failed: {_reason(exc)}")
            await self._finalize(task.id)
            return
        finally:
            self.staging.discard(image.id)
        if not task.all_stores_must_succeed:
            # allow-failure: usable as soon as the first store (central) has it
            await self.catalog.update_image(image.id, fields={"status": ImageStatus.ACTIVE})
        image = await self.catalog.require_image(image.id)
        await self._copy_to(task, image, [s for s in task.stores if s != self.central])
        await self._finalize(task.id)

    async def _run_copy(self, task: Task) -> None:
        image = await self.catalog.require_image(task.image_id)
        await self._copy_to(task, image, task.stores)
        await self._finalize(task.id)

    async def _write_central(self, task: Task, image: Image) -> None:
        await self._set_job(task, self.central, StoreJobState.RUNNING)
        source, fields = await self._prepare_source(task, image)
        reader = FileSource(source)
        data = MeasuredSource(reader)
        try:
            digest, location = await self.sites.central.ingest(image.id, data,
                                                               self._progress_recorder(task, self.central))
        finally:
            reader.close()
        await self.catalog.update_image(image.id, fields={
            **fields, "size": digest.size, "checksum": digest.checksum,
            "os_hash_algo": "sha512", "os_hash_value": digest.os_hash_value,
        })
        await self._set_job(task, self.central, StoreJobState.DONE, bytes_done=data.data_bytes,
                            bytes_total=data.data_bytes, location=location)

    async def _prepare_source(self, task: Task, image: Image) -> tuple[Path, dict[str, Any]]:
        """Fetch (web-download), inspect, vet and convert the staged data.
        Returns the RAW file to store and the image fields it implies."""
        staged = self.staging.path(image.id)
        if task.method == "web-download":
            await download(task.input["uri"], staged, rules=self.config.uri_filter,
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
        await self._set_job(task, store, StoreJobState.RUNNING)
        with self.metrics.copy(store) as timing:
            try:
                source = self.sites[task.input.get("source") or self.central]
                location = await self.sites[store].replicate(
                    image, source, self._progress_recorder(task, store),
                    job_id=f"{task.id}-{store}", resume=resume)
            except Exception as exc:
                # Any failure fails this store only: letting one escape would end
                # the gather while sibling copies still run, and finalize under them.
                timing.failed(failure_reason(exc))
                reason = _reason(exc)
                log.warning("copy of %s to %s failed: %s", image.id, store, reason,
                            exc_info=not isinstance(exc, EdgesyncError))
                await self._set_job(task, store, StoreJobState.FAILED, reason=reason)
                return
        # bytes_done: whatever progress said last (throttled) is now all of it
        await self._set_job(task, store, StoreJobState.DONE, location=location, all_bytes_done=True)

    # --- outcome --------------------------------------------------------------

    async def _finalize(self, task_id: str) -> None:
        """Apply the allow-failure rule to a task whose stores are all
        finished, roll back if it says so, and release the image."""
        task = await self.catalog.get_task(task_id)
        assert task is not None
        image = await self.catalog.get_image(task.image_id)
        failed = task.stores_in(StoreJobState.FAILED)
        succeeded = task.stores_in(StoreJobState.DONE)
        new_import = task.method in NEW_IMPORT_METHODS
        if new_import:
            ok = self.central in succeeded and not (task.all_stores_must_succeed and failed)
        else:
            ok = bool(succeeded) and not (task.all_stores_must_succeed and failed)
        if not ok:
            await self._roll_back(task, succeeded)
        fields = self._final_image_fields(task, image, ok) if new_import else {}
        message = self._outcome_message(task, ok, failed)
        if new_import and image is not None:
            self.staging.discard(image.id)
        await self.catalog.finish_task(
            task.id, TaskStatus.SUCCESS if ok else TaskStatus.FAILURE, message,
            image_fields=fields,
            set_properties={IMPORTING_TO_STORES: "", FAILED_IMPORT: ",".join(failed)},
            remove_properties=[IMPORT_TASK],
        )
        log.info("task %s on image %s: %s", task.id, task.image_id, message)

    def _final_image_fields(self, task: Task, image: Image | None, ok: bool) -> dict[str, Any]:
        if image is None:
            return {}
        if ok:
            return {"status": ImageStatus.ACTIVE}
        # Back to queued with no data: retryable from scratch.
        original = task.input.get("disk_format") or image.disk_format
        return {"status": ImageStatus.QUEUED, "disk_format": original, **HASH_FIELDS_CLEARED}

    async def _roll_back(self, task: Task, stores: list[str]) -> None:
        """Remove every copy this task wrote (must-succeed failed, or a new
        import that never reached central)."""
        for store in stores:
            try:
                await self.sites[store].remove(task.image_id)
            except Exception as exc:  # must not stop the task from finishing and unlocking
                log.error("rollback of %s in %s failed: %s", task.image_id, store, _reason(exc),
                          exc_info=not isinstance(exc, EdgesyncError))
            await self.catalog.remove_location(task.image_id, store)
            await self._set_job(task, store, StoreJobState.ROLLED_BACK, reason="rolled back: another store failed")

    @staticmethod
    def _outcome_message(task: Task, ok: bool, failed: list[str]) -> str:
        reasons = "; ".join(f"{j.store}: {j.reason}" for j in task.jobs if j.store in failed)
        if ok:
            return f"imported to {len(task.stores) - len(failed)} store(s)" + (
                f"; failed: {reasons}" if reasons else "")
        rule = " (all_stores_must_succeed: every store was rolled back)" if task.all_stores_must_succeed else ""
        return f"failed{rule}: {reasons or 'no store succeeded'}"

    async def _fail_all(self, task: Task, reason: str, *, keep: Collection[str] = ()) -> None:
        """Fail every unfinished job of the task but those in `keep`."""
        fresh = await self.catalog.get_task(task.id)
        for job in (fresh or task).jobs:
            if not job.state.finished and job.store not in keep:
                await self._set_job(task, job.store, StoreJobState.FAILED, reason=reason)

    # --- job bookkeeping ------------------------------------------------------

    async def _set_job(self, task: Task, store: str, state: StoreJobState, *,
                       reason: str | None = None, bytes_done: int | None = None,
                       bytes_total: int | None = None, all_bytes_done: bool = False,
                       location: Any = None) -> None:
        job = task.job(store)
        assert job is not None
        job.state = state
        if reason is not None:
            job.reason = reason
        await self.catalog.update_job(
            task.id, store, state, reason=reason, bytes_done=bytes_done, bytes_total=bytes_total,
            all_bytes_done=all_bytes_done,
            image_properties=self._progress(task),
            location=(task.image_id, location) if location is not None else None,
        )

    @staticmethod
    def _progress(task: Task) -> dict[str, str]:
        return {
            IMPORTING_TO_STORES: ",".join(task.unfinished_stores),
            FAILED_IMPORT: ",".join(task.stores_in(StoreJobState.FAILED)),
        }

    def _progress_recorder(self, task: Task, store: str) -> CopyProgressFn:
        """Records a store's progress (data bytes, holes excluded) at most
        once per PROGRESS_INTERVAL_S: the first report, so the total shows at
        once, and then at that pace."""
        last: float | None = None

        async def record(done_bytes: int, total_bytes: int) -> None:
            nonlocal last
            now = time.monotonic()
            if last is None or now - last >= PROGRESS_INTERVAL_S:
                last = now
                await self.catalog.record_progress(task.id, store, done_bytes, total_bytes)

        return record

    # --- lifecycle ------------------------------------------------------------

    async def recover(self) -> None:
        """After a restart: finish every task the last run left open, so no
        image stays locked or `importing`, and clear staging residue.

        Work the hub did itself (central, local stores) died with it: those
        jobs fail. Copies a site's agent was making go on without the hub, so
        their jobs are re-attached, not failed: a task with such jobs is run
        on (see `_resume`) once the bus is up, and `_finalize` decides its
        outcome as on the normal path. So does a task with any agent's store,
        since its rollback may need the agents."""
        for task in await self.catalog.tasks(unfinished_only=True, limit=10_000):
            await self._clean_local_leftovers(task)
            resumable = self._resumable(task)
            await self._fail_all(task, "interrupted: the hub restarted while this store was being written",
                                 keep=resumable)
            if not any(self._outlives_hub(j.store) for j in task.jobs):
                await self._finalize(task.id)
                continue
            # Hold the image at once: the lock may have lapsed while the hub was down.
            await self.catalog.renew_lock(task.image_id, task.id, self.config.lock_ttl_s)
            log.info("recovery: task %s on image %s goes on; waiting for %s", task.id, task.image_id,
                     ", ".join(resumable) or "nothing (finishing it)")
            self._spawn(task, self._resume(task, resumable))
        await self._clean_staging()

    def _outlives_hub(self, store: str) -> bool:
        site = self.sites.get(store)  # None: the site was removed from the config
        return site is not None and site.copies_outlive_hub

    def _resumable(self, task: Task) -> list[str]:
        """The unfinished jobs a site's agent may be doing. None while central
        is unfinished in the task: hub first, so no edge copy started yet."""
        central = task.job(self.central)
        if central is not None and central.state != StoreJobState.DONE:
            return []
        return [name for name in task.unfinished_stores if self._outlives_hub(name)]

    async def _resume(self, task: Task, stores: list[str]) -> None:
        image = await self.catalog.require_image(task.image_id)
        await self._copy_to(task, image, stores, resume=True)
        await self._finalize(task.id)

    async def _clean_local_leftovers(self, task: Task) -> None:
        """Partial or unrecorded copies the dead run left at the task's sites
        (those the hub writes itself; an agent cleans its own, from its journal)."""
        image = await self.catalog.get_image(task.image_id)
        recorded = image.stores if image is not None else []
        for name in task.unfinished_stores:
            site = self.sites.get(name)  # None: the site was removed from the config
            if site is None:
                continue
            try:
                await site.clean_after_crash(task.image_id, recorded=name in recorded)
            except Exception as exc:  # noqa: BLE001 — a broken store must not stop the hub starting
                log.warning("recovery: cleaning %s in %s failed: %s", task.image_id, name, _reason(exc))

    async def _clean_staging(self) -> None:
        for image_id in self.staging.staged_ids():
            image = await self.catalog.get_image(image_id)
            if image is None or image.status != ImageStatus.UPLOADING or not self.staging.has(image_id):
                self.staging.discard(image_id)
        # `uploading` without whole staged data: the hub died mid-stage. Back
        # to queued, so the client can stage again.
        for hidden in (False, True):
            query = ImageQuery(is_admin=True, status=ImageStatus.UPLOADING.value, os_hidden=hidden)
            for image in await self.catalog.list_images(query):
                if not self.staging.has(image.id):
                    await self.catalog.update_image(image.id, fields={"status": ImageStatus.QUEUED},
                                                    expect_status=[ImageStatus.UPLOADING])

    async def shutdown(self, grace_s: float = 5.0) -> None:
        tasks = list(self._running.values())
        if tasks:
            await asyncio.wait(tasks, timeout=grace_s)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def wait_idle(self) -> None:
        """Tests and benchmarks: wait until no task is running."""
        while self._running:
            await asyncio.gather(*list(self._running.values()), return_exceptions=True)
