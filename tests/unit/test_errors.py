"""The failure taxonomy: each class carries its code and reason, and a failure
at an agent means the same at the hub (same class for store errors, same
metric reason, same retryability)."""

from __future__ import annotations

import pytest

from edgesync import errors
from edgesync.agent.replicator import failure_event
from edgesync.errors import (
    ChecksumMismatch,
    ChunkDigestMismatch,
    EdgesyncError,
    FailureReason,
    SizeMismatch,
    StoreError,
    StoreFull,
    StoreImageExists,
    StoreImageInUse,
    StoreImageNotFound,
    StoreUnavailable,
    TransferError,
    failure_code,
    failure_reason,
)
from edgesync.hub.remote import AgentTaskFailed, _failure
from edgesync.metrics import FAILURE_REASONS
from tests.fixtures.sparse_images import LinkDown

STORE_ERRORS = [StoreError, StoreImageExists, StoreImageNotFound, StoreImageInUse, StoreFull, StoreUnavailable,
                SizeMismatch]


def test_codes_of_the_taxonomy_are_distinct() -> None:
    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, EdgesyncError)]
    codes = [c.code for c in classes]
    assert len(classes) > 15 and len(set(codes)) == len(codes)


def test_a_class_without_a_code_is_named_after_itself() -> None:
    class QuotaSpent(StoreFull):
        pass

    assert QuotaSpent.code == "quota_spent" and QuotaSpent.reason == FailureReason.STORE_FULL
    assert failure_code(QuotaSpent("x")) == "quota_spent"


def test_the_metric_labels_are_the_taxonomy_reasons() -> None:
    assert set(FAILURE_REASONS) == {r.value for r in FailureReason}
    assert {c.reason for c in vars(errors).values() if isinstance(c, type) and issubclass(c, EdgesyncError)} \
        <= set(FailureReason)


@pytest.mark.parametrize("cls", STORE_ERRORS)
def test_an_agents_store_error_is_the_same_class_at_the_hub(cls: type[StoreError]) -> None:
    sent = cls("ceph said no")
    at_hub = _failure("dcn0", failure_event("t1", sent))
    assert type(at_hub) is cls
    assert (at_hub.http_status, at_hub.retryable, failure_reason(at_hub)) == (
        sent.http_status, sent.retryable, failure_reason(sent))
    assert "dcn0: ceph said no" in at_hub.message


@pytest.mark.parametrize("sent", [
    ChecksumMismatch("sha512 differs"), TransferError("HTTP 503"), ChunkDigestMismatch("range"),
    LinkDown("down"), RuntimeError("bug"),
])
def test_other_agent_failures_keep_their_code_and_reason_at_the_hub(sent: BaseException) -> None:
    event = failure_event("t1", sent)
    at_hub = _failure("dcn0", event)
    assert isinstance(at_hub, AgentTaskFailed)
    assert (at_hub.code, at_hub.retryable) == (event.code, event.retryable)
    assert failure_reason(at_hub) == failure_reason(sent)
