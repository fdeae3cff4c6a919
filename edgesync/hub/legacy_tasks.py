"""Glance's (legacy) `import` task, mapped onto the hub's own import.

`POST /v2/tasks {"type": "import", "input": {"import_from": URL,
"import_from_format": FMT, "image_properties": {…}}}` creates the image
from `image_properties` (disk_format defaults to `import_from_format`,
container_format to bare) and starts a web-download import of `import_from`
into central, under the same URI filter as any web-download. The task is the
hub's own import task; its Glance type and input are recorded beside it. If
the import can't start, the image just created is deleted again, so a
refused task leaves nothing behind.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edgesync.catalog.glance_tasks import LEGACY_TYPE, GlanceTask, GlanceTasks
from edgesync.errors import BadRequest, EdgesyncError
from edgesync.hub.api.import_request import parse_import_request
from edgesync.hub.auth import Caller
from edgesync.importer.download import redact_uri

if TYPE_CHECKING:
    from edgesync.hub.app import Hub

_REQUIRED_INPUT = ("import_from", "import_from_format", "image_properties")


def check_task_body(body: Any) -> tuple[str, dict[str, Any]]:
    if not isinstance(body, dict):
        raise BadRequest("A task is a JSON object with 'type' and 'input'")
    for key in ("type", "input"):
        if key not in body:
            raise BadRequest(f"Task '{key}' is required")
    extra = sorted(set(body) - {"type", "input"})
    if extra:
        raise BadRequest(f"Additional properties are not allowed ({', '.join(map(repr, extra))} unexpected)")
    task_type, task_input = body["type"], body["input"]
    if task_type != LEGACY_TYPE:
        raise BadRequest(f"Task type {task_type!r} can't be created here: only 'import' tasks can "
                         "(for interoperable import use POST /v2/images/{image_id}/import)")
    if not isinstance(task_input, dict):
        raise BadRequest("Task 'input' must be a JSON object")
    missing = [key for key in _REQUIRED_INPUT if key not in task_input]
    if missing:
        raise BadRequest(f"Input to an import task needs {', '.join(_REQUIRED_INPUT)}; missing: {', '.join(missing)}")
    if not isinstance(task_input["import_from"], str) or not isinstance(task_input["import_from_format"], str):
        raise BadRequest("import_from (a URL) and import_from_format (a disk format) must be strings")
    if not isinstance(task_input["image_properties"], dict):
        raise BadRequest("image_properties must be a JSON object of the new image's properties")
    return task_type, task_input


async def create_import_task(hub: Hub, caller: Caller, body: Any) -> GlanceTask:
    task_type, task_input = check_task_body(body)
    properties = {"disk_format": task_input["import_from_format"], "container_format": "bare",
                  **task_input["image_properties"]}
    image = await hub.images.create(caller, properties)
    try:
        web_download = {"method": {"name": "web-download", "uri": task_input["import_from"]},
                        "stores": [hub.central]}
        req = parse_import_request(web_download, list(hub.sites), hub.config.imports.enabled_methods)
        task = await hub.importer.request_import(image, caller, req)
        if task is None:  # a web-download always starts a task
            raise EdgesyncError(f"import of image {image.id} started no task")
        tasks = GlanceTasks(hub.catalog)
        # The record keeps the source without its user:password (issue 11).
        await tasks.record(task.id, task_type, {**task_input, "import_from": redact_uri(task_input["import_from"])})
    except BaseException:
        await _discard(hub, caller, image.id)
        raise
    found = await tasks.get(task.id)
    return found if found is not None else GlanceTask(task, task_type, task_input)


async def _discard(hub: Hub, caller: Caller, image_id: str) -> None:
    image = await hub.catalog.get_image(image_id)
    if image is not None and await hub.catalog.lock_holder(image_id) is None:
        await hub.images.delete(caller, image_id)
