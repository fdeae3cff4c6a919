"""Structured log lines: JSON objects carrying site, image and task from the context."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
from collections.abc import Iterator

import pytest

from edgesync import logs
from edgesync.logs import log_context, task_context


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO, logging.Handler]]:
    """A logger of its own (pytest's root handlers stay untouched) writing to a buffer."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(logs.ContextFilter())
    logger = logging.getLogger(f"edgesync.test.{os.getpid()}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        yield logger, stream, handler
    finally:
        logger.removeHandler(handler)


def json_lines(stream: io.StringIO) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(line) for line in stream.getvalue().splitlines()]


async def test_json_lines_carry_the_context_of_the_task_that_logs(captured) -> None:  # type: ignore[no-untyped-def]
    logger, stream, handler = captured
    handler.setFormatter(logs.JsonFormatter())

    async def copy(store: str) -> None:
        logger.info("copy to %s started", store)
        await asyncio.sleep(0)
        logger.warning("copy to %s failed", store, extra={"reason": "link down"})

    with log_context(site="dcn0"):
        logger.info("agent up")
        with log_context(task_id="t-1", image_id="img-1"):
            await asyncio.gather(*(asyncio.create_task(copy(s), context=task_context(site=s))
                                   for s in ("dcn1", "dcn2")))
        logger.info("after the task")
    logger.info("outside")

    lines = json_lines(stream)
    assert len(lines) == 7 and {"ts", "level", "logger", "msg"} <= lines[0].keys()
    assert lines[0]["msg"] == "agent up" and lines[0]["site"] == "dcn0" and "task_id" not in lines[0]
    by_msg = {line["msg"]: line for line in lines}
    failed = by_msg["copy to dcn2 failed"]
    assert (failed["level"], failed["site"], failed["image_id"], failed["task_id"], failed["reason"]) == \
        ("warning", "dcn2", "img-1", "t-1", "link down")
    assert by_msg["copy to dcn1 started"]["site"] == "dcn1"  # each task its own site, interleaved
    assert "task_id" not in by_msg["after the task"] and by_msg["after the task"]["site"] == "dcn0"
    assert {"site", "task_id", "image_id"}.isdisjoint(by_msg["outside"])
    assert lines[0]["ts"].endswith("Z") and lines[0]["logger"] == logger.name


def test_extra_wins_over_the_context_and_tracebacks_stay_in_one_line(captured) -> None:  # type: ignore[no-untyped-def]
    logger, stream, handler = captured
    handler.setFormatter(logs.JsonFormatter())
    with log_context(site="dcn0", task_id="t-1"):
        logger.info("for another task", extra={"task_id": "t-2"})
        try:
            raise ValueError("bad\nthing")
        except ValueError:
            logger.exception("it broke")
    first, second = json_lines(stream)  # two events, two lines, whatever the traceback holds
    assert first["task_id"] == "t-2" and first["site"] == "dcn0"
    assert second["level"] == "error" and "ValueError: bad" in second["exc"]


def test_text_lines_append_the_fields(captured) -> None:  # type: ignore[no-untyped-def]
    logger, stream, handler = captured
    handler.setFormatter(logs.TextFormatter())
    with log_context(site="dcn0", image_id="img-1"):
        logger.info("copied %d bytes", 42)
    logger.info("plain")
    tagged, plain = stream.getvalue().splitlines()
    assert tagged.endswith("INFO " + logger.name + ": copied 42 bytes [site=dcn0 image_id=img-1]")
    assert plain.endswith(": plain")


def test_the_journal_gets_syslog_priorities(captured) -> None:  # type: ignore[no-untyped-def]
    logger, stream, handler = captured
    handler.setFormatter(logs.JournalPriorityFormatter(logs.JsonFormatter()))
    logger.warning("careful")
    logger.debug("detail")
    warning, debug = stream.getvalue().splitlines()
    assert warning.startswith("<4>{") and json.loads(warning[3:])["msg"] == "careful"
    assert debug.startswith("<7>")


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="text, json"):
        logs.configure("info", "yaml")
