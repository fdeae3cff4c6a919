"""Nova's own code at an edge site's compute node, run in .venv-openstack.

Configured as a DCN compute node is (nova.conf, loaded by oslo.config):
`[libvirt] images_type = rbd` on the site's `vms` pool with the site's
ceph.conf and Ceph user, `images_rbd_glance_store_name` = the site's store
(so a boot without a local copy asks the image service to copy it there),
the image service found in the Keystone catalog (or `[glance] api_servers`),
and `[service_user] send_service_user_token` as the nova service user.

Actions (the request's "action"):
- boot: what the libvirt driver does creating the root disk of an instance
  from an image on RBD — `nova.image.glance.API.get` (locations included),
  `nova.storage.rbd_utils.RBDDriver.is_cloneable` for each location, then
  `nova.virt.libvirt.imagebackend.Rbd.clone` (which clones a cloneable
  location or, with none, copies the image to the site's store with
  `API.copy_image_to_store` and waits in its loop, then clones).
- snapshot: Nova's snapshot of that instance — `compute_utils.create_image`
  (the queued record nova-api makes), `Rbd.direct_snapshot`, then
  `API.update(..., {"location": ...}, purge_props=False)` as
  `LibvirtDriver.snapshot` calls it; on failure it cleans up as the driver
  does (the new RBD image destroyed) and reports the error.
- delete_image: `API.delete` (a 409 is Nova's ImageDeleteConflict).
- destroy_disk: `RBDDriver.destroy_volume` of the instance's disk (what
  deleting the instance does).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import _common


def _configure(request: dict[str, Any]) -> None:
    import nova.conf
    from oslo_log import log

    dep = request["deployment"]
    service = dep["nova"]
    conf = _common.write_conf(Path(request["workdir"]) / "nova.conf", {
        "DEFAULT": {"state_path": request["workdir"], "use_stderr": True, "debug": True},
        "libvirt": {"images_type": "rbd", "images_rbd_pool": dep["vms_pool"],
                    "images_rbd_ceph_conf": dep["ceph_conf"], "rbd_user": dep["rbd_user"],
                    "images_rbd_glance_store_name": dep["site"],
                    "images_rbd_glance_copy_poll_interval": 1,
                    "images_rbd_glance_copy_timeout": dep.get("copy_timeout_s", 120)},
        "glance": {"api_servers": dep.get("glance_api_servers"), "region_name": dep["region"],
                   "valid_interfaces": "internal", "num_retries": 0, "cafile": dep.get("cafile")},
        "service_user": {"send_service_user_token": True, "auth_type": "password",
                         "auth_url": dep["auth_url"], "username": service["username"],
                         "password": service["password"], "project_name": service["project_name"],
                         "user_domain_name": "Default", "project_domain_name": "Default",
                         "cafile": dep.get("cafile")},
    })
    log.register_options(nova.conf.CONF)
    nova.conf.CONF(["--config-file", str(conf)], project="nova")
    log.setup(nova.conf.CONF, "nova")


def _context(request: dict[str, Any]) -> Any:
    from nova import context

    who = _common.caller(request["deployment"], request["deployment"]["nova"], request["token"])
    return context.RequestContext(user_id=who["user_id"], project_id=who["project_id"], roles=who["roles"],
                                  auth_token=request["token"], service_catalog=who["catalog"])


def boot(request: dict[str, Any]) -> dict[str, Any]:
    from nova.image import glance
    from nova.storage import rbd_utils
    from nova.virt.libvirt import imagebackend

    ctx = _context(request)
    api = glance.API()
    image = api.get(ctx, request["image_id"], include_locations=True)
    driver = rbd_utils.RBDDriver()
    cloneable = [loc["url"] for loc in image["locations"] if driver.is_cloneable(loc, image)]
    disk = imagebackend.Rbd(path=f"{driver.pool}/{request['disk']}")
    disk.clone(ctx, request["image_id"])
    after = api.get(ctx, request["image_id"], include_locations=True)
    return {"locations": [loc["url"] for loc in image["locations"]], "cloneable": cloneable,
            "stores_before": image.get("stores"), "stores_after": after.get("stores"),
            "parent": list(driver.parent_info(request["disk"]))}


def snapshot(request: dict[str, Any]) -> dict[str, Any]:
    from nova import objects, utils
    from nova.compute import utils as compute_utils
    from nova.image import glance
    from nova.virt.libvirt import imagebackend
    from nova.virt.libvirt.driver import LibvirtDriver

    objects.register_all()
    ctx = _context(request)
    api = glance.API()
    base = api.get(ctx, request["base_image_id"])
    instance = objects.Instance(uuid=request["instance_uuid"], project_id=ctx.project_id, user_id=ctx.user_id,
                                image_ref=request["base_image_id"], kernel_id="", ramdisk_id="", os_type=None,
                                system_metadata=utils.get_system_metadata_from_image(base))
    created = compute_utils.create_image(ctx, instance, request["name"], "snapshot", api)
    root_disk = imagebackend.Rbd(path=f"{request['deployment']['vms_pool']}/{request['disk']}")
    metadata = LibvirtDriver._create_snapshot_metadata(None, instance.image_meta, instance, "raw",
                                                       request["name"])
    metadata["location"] = root_disk.direct_snapshot(ctx, uuid.uuid4().hex, "raw", created["id"],
                                                     request["base_image_id"])
    try:
        updated = api.update(ctx, created["id"], metadata, purge_props=False)
    except Exception as exc:
        # LibvirtDriver.snapshot's clean-up of a direct snapshot the image service refused
        root_disk.cleanup_direct_snapshot({"url": metadata["location"]}, also_destroy_volume=True,
                                          ignore_errors=True)
        exc.add_note(f"image {created['id']}, location {metadata['location']}")
        raise
    return {"image_id": created["id"], "location": metadata["location"], "status": updated.get("status")}


def delete_image(request: dict[str, Any]) -> None:
    from nova.image import glance

    glance.API().delete(_context(request), request["image_id"])


def destroy_disk(request: dict[str, Any]) -> None:
    from nova.storage import rbd_utils

    rbd_utils.RBDDriver().destroy_volume(request["disk"])


def _handle(action: Any) -> Any:
    def handler(request: dict[str, Any]) -> Any:
        _configure(request)
        return action(request)
    return handler


if __name__ == "__main__":
    _common.run({name: _handle(fn) for name, fn in
                 {"boot": boot, "snapshot": snapshot, "delete_image": delete_image,
                  "destroy_disk": destroy_disk}.items()})
