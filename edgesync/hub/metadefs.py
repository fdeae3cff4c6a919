"""Metadata definitions (metadefs) as Glance has them: who may see and change
which namespace (Glance's metadef policy rules; a namespace a caller may not
see is a 404, as in Glance), protection (a protected namespace, and what is
in it, can't be deleted), request bodies checked against the very schemas
`/v2/schemas/metadefs/*` serves, and the JSON Glance answers with.
"""

from __future__ import annotations

from typing import Any

import jsonschema

from edgesync.catalog.metadefs import Association, Item, Metadefs, Namespace, NamespaceQuery
from edgesync.errors import BadRequest, Forbidden, NotFound
from edgesync.hub import metadef_schemas as schemas
from edgesync.hub.auth import Caller
from edgesync.hub.policy import Policy

READ_ONLY = ("self", "schema", "created_at", "updated_at")
_CONTENT_RULES = {"object": "add_metadef_object", "property": "add_metadef_property", "tag": "add_metadef_tag"}


def validate(body: Any, schema: dict[str, Any], what: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest(f"The body of a metadata definition {what} must be a JSON object")
    for key in READ_ONLY:
        if key in body:
            raise Forbidden(f"Attribute '{key}' is read-only.")
    try:
        jsonschema.validate(body, schema)
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path)
        raise BadRequest(f"Invalid {what}{f' at {where}' if where else ''}: {exc.message}") from exc
    return body


def target(ns: Namespace) -> dict[str, Any]:
    return {"project_id": ns.owner, "visibility": ns.visibility}


class MetadefService:
    def __init__(self, metadefs: Metadefs, policy: Policy) -> None:
        self.db = metadefs
        self.policy = policy

    async def visible(self, caller: Caller, name: str, rule: str = "get_metadef_namespace") -> Namespace:
        """The namespace, if the caller may see it (a 404 otherwise, as Glance)."""
        ns = await self.db.get_namespace(name)
        if ns is None or not self.policy.allows("get_metadef_namespace", caller, target(ns)):
            raise NotFound(f"Metadata definition namespace={name} was not found.")
        if rule != "get_metadef_namespace":
            self.policy.authorize(rule, caller, target(ns))
        return ns

    async def writable(self, caller: Caller, name: str, rule: str, *, deleting: bool = False) -> Namespace:
        ns = await self.visible(caller, name)
        self.policy.authorize(rule, caller, target(ns))
        if deleting and ns.protected:
            raise Forbidden(f"Namespace {ns.namespace} is protected and cannot be deleted; set protected to "
                            "false first (PUT /v2/metadefs/namespaces/{namespace})")
        return ns

    # --- namespaces ---------------------------------------------------------------

    async def create_namespace(self, caller: Caller, body: Any) -> Namespace:
        self.policy.authorize("add_metadef_namespace", caller, {"project_id": caller.project})
        body = validate(body, schemas.namespace_schema(), "namespace")
        items = contents_of(body)
        for kind in {item.kind for item in items}:
            self.policy.authorize(_CONTENT_RULES[kind], caller, {"project_id": caller.project})
        associations = [association_of(a) for a in body.get("resource_type_associations", [])]
        if associations:
            self.policy.authorize("add_metadef_resource_type_association", caller, {"project_id": caller.project})
        ns = Namespace(namespace=body["namespace"], visibility=body.get("visibility", "private"),
                       protected=body.get("protected", False), owner=body.get("owner", caller.project),
                       display_name=body.get("display_name"), description=body.get("description"))
        return await self.db.create_namespace(ns, items, associations)

    async def list_namespaces(self, caller: Caller, query: NamespaceQuery) -> list[Namespace]:
        self.policy.authorize("get_metadef_namespaces", caller, {"project_id": caller.project})
        query.viewer_project = None if caller.is_admin else caller.project
        found = await self.db.list_namespaces(query)
        return [ns for ns in found if self.policy.allows("get_metadef_namespace", caller, target(ns))]

    async def update_namespace(self, caller: Caller, name: str, body: Any) -> Namespace:
        ns = await self.writable(caller, name, "modify_metadef_namespace")
        body = validate(body, schemas.namespace_schema(), "namespace")
        fields = {key: body[key] for key in ("namespace", "display_name", "description", "visibility",
                                             "protected", "owner") if key in body}
        return await self.db.update_namespace(ns.namespace, fields)

    async def delete_namespace(self, caller: Caller, name: str) -> None:
        await self.db.delete_namespace(await self.writable(caller, name, "delete_metadef_namespace", deleting=True))

    async def namespace_json(self, ns: Namespace, *, detail: bool, resource_type: str | None = None) -> dict[str, Any]:
        body = _without_none({
            "namespace": ns.namespace, "display_name": ns.display_name, "description": ns.description,
            "visibility": ns.visibility, "protected": ns.protected, "owner": ns.owner,
            "created_at": ns.created_at, "updated_at": ns.updated_at,
            "self": f"/v2/metadefs/namespaces/{ns.namespace}", "schema": "/v2/schemas/metadefs/namespace",
        })
        associations = await self.db.associations(ns)
        if associations:
            body["resource_type_associations"] = [association_json(a) for a in associations]
        if not detail:
            return body
        prefix = next((a.prefix or "" for a in associations if a.resource_type == resource_type), "")
        properties = await self.db.items(ns, "property")
        if properties:
            body["properties"] = {prefix + p.name: p.body for p in properties}
        objects = await self.db.items(ns, "object")
        if objects:
            body["objects"] = [_prefixed(object_json(ns, o, links=False), prefix) for o in objects]
        tags = await self.db.items(ns, "tag")
        if tags:
            body["tags"] = [{"name": t.name} for t in tags]
        return body


def contents_of(body: dict[str, Any]) -> list[Item]:
    """The objects, properties and tags a namespace is created with."""
    items = [Item("property", name, dict(prop)) for name, prop in body.get("properties", {}).items()]
    for obj in body.get("objects", []):
        if "name" not in obj:
            raise BadRequest("Every object of a namespace needs a 'name'")
        items.append(object_item(obj))
    for tag in body.get("tags", []):
        if "name" not in tag:
            raise BadRequest("Every tag of a namespace needs a 'name'")
        items.append(Item("tag", tag["name"], {}))
    return items


def object_item(body: dict[str, Any]) -> Item:
    return Item("object", body["name"], {key: body[key] for key in ("description", "required", "properties")
                                         if key in body})


def association_of(body: dict[str, Any]) -> Association:
    if "name" not in body:
        raise BadRequest("A resource type association needs the resource type's 'name'")
    return Association(body["name"], body.get("prefix"), body.get("properties_target"))


def association_json(a: Association) -> dict[str, Any]:
    return _without_none({"name": a.resource_type, "prefix": a.prefix, "properties_target": a.properties_target,
                          "created_at": a.created_at, "updated_at": a.updated_at})


def object_json(ns: Namespace, item: Item, *, links: bool = True) -> dict[str, Any]:
    body: dict[str, Any] = {"name": item.name, **item.body}
    body.setdefault("required", [])
    body.setdefault("properties", {})
    if links:
        body.update({"created_at": item.created_at, "updated_at": item.updated_at,
                     "self": f"/v2/metadefs/namespaces/{ns.namespace}/objects/{item.name}",
                     "schema": "v2/schemas/metadefs/object"})
    return body


def property_json(item: Item) -> dict[str, Any]:
    return {"name": item.name, **item.body}


def tag_json(item: Item) -> dict[str, Any]:
    return {"name": item.name, "created_at": item.created_at, "updated_at": item.updated_at}


def _prefixed(obj: dict[str, Any], prefix: str) -> dict[str, Any]:
    if prefix:
        obj["properties"] = {prefix + k: v for k, v in obj.get("properties", {}).items()}
        obj["required"] = [prefix + r for r in obj.get("required", [])]
    return obj


def _without_none(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if v is not None}
