"""Glance's tasks API: `/v2/tasks`, `/v2/tasks/{task_id}`, `/v2/schemas/task(s)`.

Every task the hub runs (imports and copies, type `api_image_import`) is
listed here, and `import` tasks created through `POST /v2/tasks` run as the
hub's own web-download import (edgesync/hub/legacy_tasks.py). As in Glance
the whole API is behind `tasks_api_access` (admin-only by default), then
`add_task`, `get_tasks`, `get_task`; a non-admin sees its project's tasks.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from edgesync.catalog.glance_tasks import LEGACY_TYPE, NATIVE_TYPE, GlanceTask, GlanceTasks, TaskQuery
from edgesync.errors import BadRequest, NotFound
from edgesync.hub.api.context import caller_of, hub_of, json_body
from edgesync.hub.api.middleware import error_response
from edgesync.hub.legacy_tasks import create_import_task
from edgesync.hub.schemas import task_schema, tasks_schema
from edgesync.hub.serialize import task_json
from edgesync.model import TaskStatus

routes = web.RouteTableDef()

DEFAULT_LIMIT = 25
MAX_LIMIT = 1000


def _authorize(request: web.Request, rule: str) -> None:
    policy, caller = hub_of(request).policy, caller_of(request)
    policy.authorize("tasks_api_access", caller)
    policy.authorize(rule, caller, {"project_id": caller.project})


def glance_task_json(found: GlanceTask, *, stub: bool = False) -> dict[str, Any]:
    task = found.task
    body: dict[str, Any] = {
        "id": task.id, "type": found.type, "status": task.status.value, "owner": task.owner,
        "created_at": task.created_at, "updated_at": task.updated_at,
        "self": f"/v2/tasks/{task.id}", "schema": "/v2/schemas/task",
    }
    if stub:
        return body
    native = task_json(task)
    result = native["result"]
    if task.status == TaskStatus.SUCCESS:
        result = {"image_id": task.image_id, **result}
    body.update({
        "input": found.input if found.input is not None else native["input"],
        "result": result, "message": task.message, "image_id": task.image_id, "user_id": task.user_id,
    })
    if task.request_id:
        body["request_id"] = task.request_id
    return body


@routes.post("/v2/tasks")
async def create_task(request: web.Request) -> web.Response:
    _authorize(request, "add_task")
    found = await create_import_task(hub_of(request), caller_of(request), await json_body(request))
    return web.json_response(glance_task_json(found), status=201,
                             headers={"Location": f"/v2/tasks/{found.task.id}"})


@routes.get("/v2/tasks")
async def list_tasks(request: web.Request) -> web.Response:
    _authorize(request, "get_tasks")
    query = _task_query(request)
    found = await GlanceTasks(hub_of(request).catalog).list(query)
    page = found[:query.limit]
    params = [(k, v) for k, v in request.query.items() if k != "marker"]
    body: dict[str, Any] = {
        "tasks": [glance_task_json(t, stub=True) for t in page],
        "first": "/v2/tasks" + (f"?{urlencode(params)}" if params else ""),
        "schema": "/v2/schemas/tasks",
    }
    if len(found) > query.limit:
        body["next"] = "/v2/tasks?" + urlencode([*params, ("marker", page[-1].task.id)])
    return web.json_response(body)


def _task_query(request: web.Request) -> TaskQuery:
    q, caller = request.query, caller_of(request)
    status, task_type = q.get("status"), q.get("type")
    if status is not None and status not in {s.value for s in TaskStatus}:
        raise BadRequest(f"Invalid status value: {status}")
    if task_type is not None and task_type not in (LEGACY_TYPE, NATIVE_TYPE):
        raise BadRequest(f"Invalid type value: {task_type}")
    sort_dir = q.get("sort_dir", "desc")
    if sort_dir not in ("asc", "desc"):
        raise BadRequest(f"Invalid sort direction: {sort_dir}")
    try:
        limit = int(q.get("limit", DEFAULT_LIMIT))
    except ValueError as exc:
        raise BadRequest("limit param must be an integer") from exc
    if limit < 0:
        raise BadRequest("limit param must be positive")
    return TaskQuery(owner=None if caller.is_admin else caller.project, status=status, type=task_type,
                     sort_key=q.get("sort_key", "created_at"), sort_dir=sort_dir, marker=q.get("marker"),
                     limit=min(limit, MAX_LIMIT))


@routes.get("/v2/tasks/{task_id}")
async def show_task(request: web.Request) -> web.Response:
    _authorize(request, "get_task")
    caller, task_id = caller_of(request), request.match_info["task_id"]
    found = await GlanceTasks(hub_of(request).catalog).get(task_id)
    if found is None or not (caller.is_admin or found.task.owner == caller.project):
        raise NotFound(f"Task with the given ID {task_id} not found")
    return web.json_response(glance_task_json(found))


@routes.delete("/v2/tasks/{task_id}")
async def delete_task(request: web.Request) -> web.Response:
    _authorize(request, "get_task")
    response = error_response(405, "Method Not Allowed",
                              "This operation is currently not permitted on Glance Tasks. They are auto deleted "
                              "after reaching the time based on their expires_at property.")
    response.headers["Allow"] = "GET"
    return response


@routes.get("/v2/schemas/task")
async def schema_task(request: web.Request) -> web.Response:
    return web.json_response(task_schema())


@routes.get("/v2/schemas/tasks")
async def schema_tasks(request: web.Request) -> web.Response:
    return web.json_response(tasks_schema())
