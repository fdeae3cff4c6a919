"""The hub's side of the conversation with the sites' agents (`AgentCommands`).

Copies and deletions at a site served by its agent (`hub.sites.agent.AgentSite`)
are commands to that agent, through the catalog's outbox (at-least-once),
answered by its events.

While a site's agent is down, a copy waits (the broker keeps its command for
the agent's persistent session); if the site stays down past
`offline_deadline_s`, the copy fails with the reason "site offline". The
site still gets a copy given up on when it returns, so a delete follows it:
the site must not keep a copy that no location records.

Deletes never wait for a site to come back. Each is recorded in the catalog
as a pending delete in the transaction that queues its command, and is
settled by the agent's answer whenever it comes — to the caller still
waiting, or, after the site went offline or the hub restarted, to nobody but
the catalog: a Done removes the entry (and the copy's location, if the image
still exists); a Failed nobody waits for stays listed with its reason.
`delete` waits only while the site is up and otherwise raises `SiteOffline`,
leaving the delete pending. A probe (`AgentSite.check_removable`) is a question, not
an order: it is only asked of a site that is up, and not recorded.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from edgesync.bus import (
    CheckDeletableCommand,
    CopyCommand,
    DeleteCommand,
    DoneEvent,
    FailedEvent,
    Message,
    ProgressEvent,
    SiteRefused,
    VerifyCommand,
    topics,
)
from edgesync.bus.messages import new_message_id
from edgesync.catalog import Catalog, PendingDelete
from edgesync.errors import FailureReason, StoreError, StoreUnavailable, reason_for_code, store_error_for_code
from edgesync.hub.bus_bridge import OutboxPublisher, outbox_row
from edgesync.hub.sites import SiteRegistry
from edgesync.transfer.pipeline import CopyProgressFn

log = logging.getLogger(__name__)

Command = CopyCommand | DeleteCommand | CheckDeletableCommand | VerifyCommand
WAIT_SLICE_S = 1.0
# An agent that is up answers a probe in milliseconds; one that doesn't in
# this long is stuck, and the caller gets a 503 to try again.
PROBE_TIMEOUT_S = 30.0
PENDING_HINT = "GET /edgesync/v1/pending-deletes lists it until the agent confirms"
RESEND_AFTER_BEATS = 3  # heartbeats in a row without the task before it is sent again
RESEND_MAX_BEATS = 48  # the wait between resends doubles up to this
UNCLAIMED_KEPT = 1000
# An agent that knows verify lists it in flight while it hashes; one whose
# heartbeats still lack it after this many resends (an older agent drops the
# type) is given up on, so the image doesn't stay importing.
VERIFY_MAX_RESENDS = 3

# A command's life at the hub, per task id (one `_Pending` while someone waits):
#
#              the broker acked its outbox row
#   QUEUED ──────────────────────────────────▶ SENT ───Done / Failed───▶ ANSWERED
#     ▲                                         │  ▲
#     │  RESEND_AFTER_BEATS heartbeats in a row │  │ a heartbeat lists the task (in_flight or
#     │  lack the task and no answer came       │  │ queued) or progress arrives: the count
#     └─ resend: a new outbox row and message ──┘  └─ of heartbeats lacking it starts again
#        id, same task id; the next resend waits twice as many heartbeats
#
#   any state ──the site down longer than offline_deadline_s──▶ FAILED ("site offline");
#                a copy failed so is followed by a delete of it to that site
#   (a delete or a probe: the site down at all ──▶ SiteOffline; see `delete`)
#
# Paho acknowledges a QoS 1 command on receipt, before the agent journals it,
# and it acknowledges the hub's events the same way, before the hub handled
# them: a crash on either side can lose the one message that mattered. A
# resend covers both: the agent's journal is idempotent by task id, so a
# command it holds is left alone and one it finished is answered again.
# Heartbeats older than the command can't list it: hence several in a row.
#
# After a hub restart, `call(…, resume=True)` re-attaches to a copy the
# agent may be running: it sends the command only if the outbox never held
# it, and otherwise waits as above. An answer that arrives while nobody
# waits (before the re-attached caller registered) is kept in `_unclaimed`.


class SiteOffline(StoreUnavailable):
    """The site's agent is down: a copy that waited past the offline deadline
    fails with this; a probe can't be asked; a delete is left pending."""

    reason = FailureReason.SITE_OFFLINE


@dataclass
class _Pending:
    site: str
    command: Command
    result: asyncio.Future[Message] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    on_progress: CopyProgressFn | None = None
    sent: bool = False  # an outbox row for it was acknowledged by the broker
    heartbeats_seen: int = 0  # the site's heartbeat count when last looked at
    missing: int = 0  # heartbeats in a row since `sent` that lacked the task
    resend_after: int = RESEND_AFTER_BEATS
    resends: int = 0


class AgentCommands:
    """Sends commands to agents and matches their answers to the waiting callers."""

    def __init__(self, catalog: Catalog, publisher: OutboxPublisher, registry: SiteRegistry,
                 *, offline_deadline_s: float, check_every_s: float = WAIT_SLICE_S) -> None:
        self.catalog = catalog
        self.publisher = publisher
        self.registry = registry
        self.offline_deadline_s = offline_deadline_s
        self.check_every_s = check_every_s
        self._pending: dict[str, _Pending] = {}
        self._unclaimed: OrderedDict[str, tuple[str, Message]] = OrderedDict()
        publisher.on_published(self._published)

    async def call(self, site: str, command: CopyCommand,
                   on_progress: CopyProgressFn | None = None, *, resume: bool = False) -> DoneEvent:
        """Send `command` to `site`'s agent and wait for its Done (returned) or
        Failed (raised as a store error), through outages up to the offline
        deadline. With `resume` (after a hub restart), a command the outbox
        already holds is not sent again, only waited for."""
        pending = self._register(site, command, on_progress)
        try:
            self._claim(pending)
            if not (resume and await self._already_sent(pending)):
                await self._send(pending)
            answer = await self._wait(pending)
        except SiteOffline:
            await self._undo_when_back(site, command)
            raise
        finally:
            self._pending.pop(command.task_id, None)
        return _answer(site, answer)

    async def probe(self, site: str, image_id: str) -> None:
        """Ask `site`'s agent whether its copy could be deleted now: returns if
        so (or if it has none), StoreImageInUse if clones depend on it,
        SiteOffline if the site is (or goes) down before it answers."""
        if not self.registry.is_up(site):
            raise SiteOffline(f"the agent of site {site} is offline; it can't be asked whether "
                              f"its copy of image {image_id} is in use")
        command = CheckDeletableCommand(task_id=str(uuid.uuid4()), image_id=image_id)
        pending = self._register(site, command)
        try:
            await self._send(pending)
            answer = await self._wait_while_up(pending, f"whether its copy of image {image_id} is in use",
                                               timeout_s=PROBE_TIMEOUT_S)
        finally:
            self._pending.pop(command.task_id, None)
        _answer(site, answer)

    async def verify(self, site: str, image_id: str, task_id: str) -> DoneEvent:
        """Have `site`'s agent check and hash its published copy of `image_id`
        (one made there by someone else): its Done carries the digest. No
        deadline (hashing takes as long as the image is big), but the site
        must stay up: SiteOffline once it isn't. The agent lists the task in
        its heartbeats while it hashes, so it is not sent again meanwhile."""
        if not self.registry.is_up(site):
            raise SiteOffline(f"the agent of site {site} is offline; it can't check its copy of image {image_id}")
        pending = self._register(site, VerifyCommand(task_id=task_id, image_id=image_id))
        try:
            await self._send(pending)
            answer = await self._wait_while_up(pending, f"the check of its copy of image {image_id}",
                                               max_resends=VERIFY_MAX_RESENDS)
        finally:
            self._pending.pop(task_id, None)
        return _answer(site, answer)

    async def delete(self, site: str, image_id: str) -> None:
        """Tell `site`'s agent to remove its copy, as a pending delete, and wait
        for the answer while the site is up. Down (now or before it answers):
        SiteOffline, and the delete stays pending until the agent returns."""
        command = DeleteCommand(task_id=str(uuid.uuid4()), image_id=image_id)
        offline = SiteOffline(f"the agent of site {site} is offline; the delete of its copy of image {image_id} "
                              f"is pending and happens when the agent returns ({PENDING_HINT})")
        pending = self._register(site, command)
        try:
            await self._send_delete(site, command)
            if not self.registry.is_up(site):
                raise offline
            answer = await self._wait_while_up(pending, f"the delete of image {image_id}")
        except SiteOffline:
            raise offline from None
        finally:
            self._pending.pop(command.task_id, None)
        _answer(site, answer)

    async def _send_delete(self, site: str, command: DeleteCommand) -> None:
        """The command into the outbox and its pending delete into the catalog, together."""
        entry = PendingDelete(task_id=command.task_id, image_id=command.image_id, site=site, created_at=time.time())
        await self.catalog.send_delete(entry, *outbox_row(topics.cmd(site), command))
        self.publisher.wake()

    def _register(self, site: str, command: Command, on_progress: CopyProgressFn | None = None) -> _Pending:
        pending = self._pending[command.task_id] = _Pending(site, command, on_progress=on_progress)
        if site in self.registry:  # count only the heartbeats from now on
            pending.heartbeats_seen = self.registry.view(site).heartbeats
        return pending

    async def _send(self, pending: _Pending) -> None:
        await self._send_to(pending.site, pending.command)

    async def _send_to(self, site: str, message: Message) -> None:
        """Into the outbox (the broker keeps it for an agent that is away)."""
        await self.catalog.outbox_add(*outbox_row(topics.cmd(site), message))
        self.publisher.wake()

    async def _already_sent(self, pending: _Pending) -> bool:
        rows = await self.catalog.outbox_for_task(pending.command.task_id)
        pending.sent = pending.sent or any(r.published_at is not None for r in rows)
        return bool(rows)

    def _published(self, payload: dict[str, Any]) -> None:
        """The publisher's callback: a row reached the broker."""
        pending = self._pending.get(payload.get("task_id", ""))
        if pending is not None and payload.get("type") == pending.command.TYPE:
            pending.sent = True
            pending.missing = 0

    async def _wait(self, pending: _Pending) -> Message:
        down_since: float | None = None
        while True:
            try:
                return await asyncio.wait_for(asyncio.shield(pending.result), self.check_every_s)
            except TimeoutError:
                pass
            await self._check_delivery(pending)
            if self.registry.is_up(pending.site):
                down_since = None
                continue
            down_since = down_since or time.monotonic()
            if time.monotonic() - down_since > self.offline_deadline_s:
                raise SiteOffline(
                    f"site offline: the agent of {pending.site} has not been up for "
                    f"{self.offline_deadline_s:.0f} s (agents.offline_deadline_s)")

    async def _undo_when_back(self, site: str, copy: CopyCommand) -> None:
        """The site still gets the copy when it returns, too late: its store
        failed with "site offline" and no location will record what the copy
        makes. A delete sent after it (an agent runs one image's commands in
        the order they came) removes it again; it is a pending delete like any."""
        log.warning("%s: copy %s of image %s given up; the site will delete it when it is back",
                    site, copy.task_id, copy.image_id)
        await self._send_delete(site, DeleteCommand(task_id=f"{copy.task_id}-undo", image_id=copy.image_id))

    async def _wait_while_up(self, pending: _Pending, what: str, *, timeout_s: float | None = None,
                             max_resends: int | None = None) -> Message:
        """The answer, as long as the site stays up (SiteOffline once it isn't)
        and, with `timeout_s`, comes within that long (StoreUnavailable); with
        `max_resends`, an agent whose heartbeats still lack the command after
        that many resends doesn't take it (StoreUnavailable)."""
        give_up_at = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            try:
                return await asyncio.wait_for(asyncio.shield(pending.result), self.check_every_s)
            except TimeoutError:
                pass
            await self._check_delivery(pending)
            if not self.registry.is_up(pending.site):
                raise SiteOffline(f"the agent of site {pending.site} went offline before answering {what}")
            if max_resends is not None and pending.resends > max_resends:
                raise StoreUnavailable(f"the agent of site {pending.site} never took {what} (sent "
                                       f"{pending.resends} times): is it older than this hub?")
            if give_up_at is not None and time.monotonic() > give_up_at:
                raise StoreUnavailable(f"the agent of site {pending.site} is up but did not answer {what} "
                                       f"within {timeout_s:.0f} s; try again")

    async def _check_delivery(self, pending: _Pending) -> None:
        """Count the heartbeats that arrived since the last look; resend the
        command if enough of them in a row say the agent doesn't have it."""
        if pending.site not in self.registry:
            return
        view = self.registry.view(pending.site)
        new_beats = view.heartbeats - pending.heartbeats_seen
        pending.heartbeats_seen = view.heartbeats
        if new_beats <= 0 or not pending.sent:
            return
        task_id = pending.command.task_id
        if task_id in view.in_flight or task_id in view.queued:
            pending.missing = 0
            return
        pending.missing += new_beats
        if pending.missing < pending.resend_after:
            return
        pending.resends += 1
        log.warning("task %s: %d heartbeats of %s do not list it and no answer came; sending it again "
                    "(resend %d)", task_id, pending.missing, pending.site, pending.resends)
        pending.sent, pending.missing = False, 0
        pending.resend_after = min(pending.resend_after * 2, RESEND_MAX_BEATS)
        # A new message, not a duplicate: a consumer that drops repeated
        # message ids must still take it.
        pending.command = dataclasses.replace(pending.command, message_id=new_message_id())
        await self._send(pending)

    async def refuse(self, site: str, availability_zone: str, reason: str) -> None:
        """Tell the agent of `site` announcing `availability_zone` to stop (the
        EventRouter's handler for an AZ that disagrees with the hub's config)."""
        await self._send_to(site, SiteRefused(site=site, availability_zone=availability_zone, reason=reason))

    async def on_event(self, site: str, message: Message) -> None:
        """Events from the bus (the EventRouter's task-event handler)."""
        task_id = getattr(message, "task_id", None)
        if isinstance(message, (DoneEvent, FailedEvent)):
            # First, so a waiting caller sees the catalog already settled.
            await self._settle_delete(site, message)
        pending = self._pending.get(task_id) if task_id else None
        if pending is None or pending.site != site:
            if task_id and isinstance(message, (DoneEvent, FailedEvent)):
                self._keep_unclaimed(task_id, site, message)
            log.debug("event %s for task %s: nobody waits for it", type(message).__name__, task_id)
            return
        if isinstance(message, ProgressEvent):
            pending.missing = 0  # the agent has it
            if pending.on_progress is not None:
                await pending.on_progress(message.bytes_done, message.bytes_total)
        elif isinstance(message, (DoneEvent, FailedEvent)) and not pending.result.done():
            pending.result.set_result(message)

    def _keep_unclaimed(self, task_id: str, site: str, message: Message) -> None:
        self._unclaimed[task_id] = (site, message)
        while len(self._unclaimed) > UNCLAIMED_KEPT:
            self._unclaimed.popitem(last=False)

    def _claim(self, pending: _Pending) -> None:
        """An answer that came before its (re-attached) caller waited for it."""
        kept = self._unclaimed.pop(pending.command.task_id, None)
        if kept is not None and kept[0] == pending.site:
            pending.result.set_result(kept[1])

    async def _settle_delete(self, site: str, answer: DoneEvent | FailedEvent) -> None:
        """The agent's answer to a pending delete, whether or not anyone still waits for it."""
        entry = await self.catalog.pending_delete(answer.task_id)
        if entry is None or entry.site != site:
            return  # not a delete, or a duplicate of an answer already settled
        where = {"site": site, "image_id": entry.image_id}
        if isinstance(answer, DoneEvent):
            await self.catalog.confirm_delete(answer.task_id)
            log.info("site %s confirmed the delete of image %s", site, entry.image_id, extra=where)
        elif answer.task_id in self._pending:
            # The caller reports the refusal; the copy and its location stay.
            await self.catalog.drop_pending_delete(answer.task_id)
        else:
            await self.catalog.fail_pending_delete(answer.task_id, answer.reason)
            log.warning("site %s refused the pending delete of image %s: %s", site, entry.image_id, answer.reason,
                        extra=where)


class AgentTaskFailed(StoreError):
    """The agent reported the task failed with a code that names no store
    error; `code` is the agent's, and the metric's reason follows from it."""

    def __init__(self, message: str, *, code: str | None, retryable: bool) -> None:
        super().__init__(message, retryable=retryable)
        self.code = code or type(self).code
        self.reason = reason_for_code(code)


def _answer(site: str, answer: Message) -> DoneEvent:
    """A Done returned, a Failed raised as the store error it stands for."""
    if isinstance(answer, FailedEvent):
        raise _failure(site, answer)
    assert isinstance(answer, DoneEvent)
    return answer


def _failure(site: str, failed: FailedEvent) -> StoreError:
    """The agent's store error as the same class here (in use: 409; its Ceph
    down: 503, try later); any other failure keeps the agent's code."""
    text = f"{site}: {failed.reason}"
    return (store_error_for_code(failed.code, text, retryable=failed.retryable)
            or AgentTaskFailed(text, code=failed.code, retryable=failed.retryable))
