"""Log lines for the daemons: one line per event, as text (default) or JSON,
carrying the site, image and task the event is about.

The fields travel in a context variable: code that works on one task wraps
that work in `log_context(task_id=…, image_id=…)`, and every line logged
beneath it, in any function and in the asyncio tasks it starts (they copy
the context), carries them. `extra={"site": …}` on one call works too and
wins over the context.

    {"ts": "2024-05-01T12:00:00.123Z", "level": "info", "logger": "edgesync.agent.tasks",
     "msg": "task 42: copy image 9f…", "site": "dcn0", "image_id": "9f…", "task_id": "42"}

When stderr is the journal (systemd sets `$JOURNAL_STREAM`), each line starts
with its syslog priority (`<6>`), which journald strips and records, so
`journalctl -p warning` works; the line itself stays one JSON object.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import sys
import time
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import IO, Any

FORMATS = ("text", "json")
CONTEXT_FIELDS = ("request_id", "site", "image_id", "task_id")

# Read-only: each log_context() sets a new mapping, never mutates the current one (shared by every context).
_context: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar(
    "edgesync_log_context", default=MappingProxyType({}))

# What every LogRecord has; anything else on a record came from `extra=` or the context.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}

_SYSLOG_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


@contextlib.contextmanager
def log_context(**fields: object) -> Iterator[None]:
    """Lines logged inside carry `fields` (None values are left out)."""
    added = {key: str(value) for key, value in fields.items() if value is not None}
    token = _context.set({**_context.get(), **added})
    try:
        yield
    finally:
        _context.reset(token)


def context_field(name: str) -> str | None:
    """A field of the current context (e.g. the request id a task records)."""
    return _context.get().get(name)


def task_context(**fields: object) -> contextvars.Context:
    """A context for `create_task(…, context=)`: the task's lines carry `fields`."""
    context = contextvars.copy_context()
    added = {key: str(value) for key, value in fields.items() if value is not None}
    context.run(_context.set, {**_context.get(), **added})
    return context


class ContextFilter(logging.Filter):
    """Puts the context's fields on each record (unless `extra=` set them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _context.get().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


def event_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The record's own fields: context and `extra=`, context fields first."""
    extra = {key: value for key, value in vars(record).items()
             if key not in _RECORD_ATTRS and not key.startswith("_")}
    ordered = {key: extra.pop(key) for key in CONTEXT_FIELDS if key in extra}
    return {**ordered, **extra}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (UTC, ms), level, logger, msg, the event's
    fields, and `exc` with the traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": _utc_timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **event_fields(record),
        }
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`2024-05-01 12:00:00,123 INFO edgesync.agent.tasks: message [site=dcn0 task_id=42]`."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        text = super().formatMessage(record)
        fields = event_fields(record)
        if not fields:
            return text
        return text + " [" + " ".join(f"{key}={value}" for key, value in fields.items()) + "]"


class JournalPriorityFormatter(logging.Formatter):
    """Prefixes another formatter's lines with `<priority>` for journald."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        priority = _SYSLOG_PRIORITY.get(record.levelno, 6 if record.levelno < logging.WARNING else 3)
        return f"<{priority}>" + self.inner.format(record)


class _DaemonHandler(logging.StreamHandler[IO[str]]):
    """The handler `configure` installs (and replaces when called again)."""


def configure(level: str = "info", log_format: str = "text", stream: IO[str] | None = None) -> None:
    """Send every log line to `stream` (stderr) in `log_format`.

    Like logging.basicConfig, it leaves a root logger that someone else
    equipped alone (pytest's capture, when a test calls the CLI in-process)."""
    if log_format not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {log_format!r}")
    root = logging.getLogger()
    if any(not isinstance(h, _DaemonHandler) for h in root.handlers):
        return
    stream = stream if stream is not None else sys.stderr
    formatter: logging.Formatter = JsonFormatter() if log_format == "json" else TextFormatter()
    if _is_journal(stream):
        formatter = JournalPriorityFormatter(formatter)
    handler = _DaemonHandler(stream)
    handler.addFilter(ContextFilter())
    handler.setFormatter(formatter)
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))


def _is_journal(stream: IO[str]) -> bool:
    """`$JOURNAL_STREAM` is "device:inode" of the journal's socket (systemd.exec(5))."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    if not expected:
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return expected == f"{st.st_dev}:{st.st_ino}"


def _utc_timestamp(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"
