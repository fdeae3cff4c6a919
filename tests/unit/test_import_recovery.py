"""Which unfinished jobs recovery re-attaches to (hub/imports/recovery.py)."""

from __future__ import annotations

from edgesync.hub.imports.recovery import resumable_stores
from edgesync.model import StoreJob, StoreJobState, Task, TaskStatus

RUNNING, DONE = StoreJobState.RUNNING, StoreJobState.DONE
AGENT_SITES = {"dcn0", "dcn1"}


def task(**states: StoreJobState) -> Task:
    t = Task(id="t1", image_id="i1", owner="p1", method="glance-direct", stores=list(states),
             all_stores_must_succeed=True, status=TaskStatus.PROCESSING)
    t.jobs = [StoreJob("t1", store, state=state) for store, state in states.items()]
    return t


def outlives(store: str) -> bool:
    return store in AGENT_SITES


def test_the_unfinished_copies_at_agent_sites_are_resumed() -> None:
    found = resumable_stores(task(central=DONE, dcn0=RUNNING, dcn1=DONE, dcn2=RUNNING),
                             central="central", outlives_hub=outlives)
    assert found == ["dcn0"]  # dcn1 is done, dcn2's copy was the hub's own and died with it


def test_nothing_is_resumed_while_central_is_unfinished_hub_first() -> None:
    found = resumable_stores(task(central=RUNNING, dcn0=RUNNING), central="central", outlives_hub=outlives)
    assert found == []


def test_a_copy_without_central_in_it_resumes_its_agent_sites() -> None:
    found = resumable_stores(task(dcn0=RUNNING, dcn1=StoreJobState.PENDING), central="central", outlives_hub=outlives)
    assert found == ["dcn0", "dcn1"]
