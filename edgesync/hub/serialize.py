"""Images and tasks as the Glance v2 API shows them."""

from __future__ import annotations

from typing import Any

from edgesync.model import CORE_FIELDS, Image, Task


def image_json(image: Image, *, show_locations: bool, central: str) -> dict[str, Any]:
    """`show_locations`: the caller may see `locations` and `direct_url`
    (hub/api/context.py, shows_locations, decides it).

    `stores` and `locations` in one stable order, central first, then by
    name — not the order the copies finished in, which differs between runs
    and images (clients compare the lists; Nova tests `stores` as a substring)."""
    body: dict[str, Any] = {field: getattr(image, field) for field in CORE_FIELDS}
    body["status"] = image.status.value
    body["visibility"] = image.visibility.value
    body["id"] = image.id
    body["tags"] = list(image.tags)
    body["self"] = f"/v2/images/{image.id}"
    body["file"] = f"/v2/images/{image.id}/file"
    body["schema"] = "/v2/schemas/image"
    # Extra properties are top-level string keys; core fields win on a clash.
    for key, value in image.properties.items():
        body.setdefault(key, value)
    locations = sorted(image.locations, key=lambda loc: (loc.store != central, loc.store))
    if locations:
        body["stores"] = ",".join(loc.store for loc in locations)
    if show_locations:
        body["locations"] = [loc.as_glance() for loc in locations]
        if locations:
            body["direct_url"] = locations[0].url
    return body


def task_json(task: Task) -> dict[str, Any]:
    """A task as `GET /v2/images/{id}/tasks` lists it, plus per-store detail."""
    return {
        "id": task.id,
        "type": "location_import" if task.method == "location-import" else "api_image_import",
        "status": task.status.value,
        "owner": task.owner,
        "user_id": task.user_id,
        "image_id": task.image_id,
        "message": task.message,
        "created_at": task.created_at,
        "updated_at": task.updated_at,
        "expires_at": None,
        "request_id": task.request_id,
        "input": {
            "import_req": {
                "method": {"name": task.method},
                "stores": task.stores,
                "all_stores_must_succeed": task.all_stores_must_succeed,
            }
        },
        "result": {
            "stores": {
                job.store: {
                    "state": job.state.value,
                    "reason": job.reason,
                    "bytes_done": job.bytes_done,
                    "bytes_total": job.bytes_total,
                    "updated_at": job.updated_at,
                }
                for job in task.jobs
            }
        },
    }
