"""Cinder's own code at an edge site's volume node, run in .venv-openstack.

Configured as a DCN cinder-volume is (cinder.conf, loaded by oslo.config):
`enabled_backends` = the site, whose section runs
`cinder.volume.drivers.rbd.RBDDriver` on the site's `volumes` pool with the
site's ceph.conf and Ceph user; the image service found in the Keystone
catalog (or `glance_api_servers`); the `[glance]` section's cinder service
user (what `get_location` authenticates the location API with) and
`[service_user] send_service_user_token`.

Actions:
- clone_image: what the volume manager's create-volume flow does for a
  volume from an image — `get_remote_image_service`, `GlanceImageService.
  get_location` and `show`, then the backend's `RBDDriver.clone_image`
  (a COW clone in the volumes pool, resized to the volume's size).
  `{"clone": false}` stops after get_location (the answer says what it saw).
- delete_volume: `RBDDriver.delete_volume` of that volume.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import _common

BACKEND_HOST = "hostgroup@{site}"


def _configure(request: dict[str, Any]) -> None:
    # The volume drivers first: cinder.image.glance imported before them is an import cycle.
    import cinder.volume.drivers.rbd  # noqa: F401
    from cinder import objects
    from cinder.common import config
    from oslo_log import log

    objects.register_all()  # as cinder-volume does first: its manager's annotations name them

    dep = request["deployment"]
    service = dep["cinder"]
    keystone = {"auth_type": "password", "auth_url": dep["auth_url"], "username": service["username"],
                "password": service["password"], "project_name": service["project_name"],
                "user_domain_name": "Default", "project_domain_name": "Default", "cafile": dep.get("cafile")}
    site = dep["site"]
    conf = _common.write_conf(Path(request["workdir"]) / "cinder.conf", {
        "DEFAULT": {"state_path": request["workdir"], "use_stderr": True, "debug": True,
                    "auth_strategy": "keystone", "enabled_backends": site,
                    "glance_api_servers": dep.get("glance_api_servers"),
                    "glance_catalog_info": "image:glance:internalURL",
                    "glance_ca_certificates_file": dep.get("cafile")},
        "oslo_concurrency": {"lock_path": request["workdir"]},
        "glance": {**keystone, "region_name": dep["region"]},
        "service_user": {**keystone, "send_service_user_token": True},
        site: {"volume_driver": "cinder.volume.drivers.rbd.RBDDriver", "volume_backend_name": site,
               "rbd_pool": dep["volumes_pool"], "rbd_ceph_conf": dep["ceph_conf"], "rbd_user": dep["rbd_user"]},
    })
    log.register_options(config.CONF)
    config.CONF(["--config-file", str(conf)], project="cinder")
    log.setup(config.CONF, "cinder")


def _context(request: dict[str, Any]) -> Any:
    from cinder import context

    who = _common.caller(request["deployment"], request["deployment"]["cinder"], request["token"])
    return context.RequestContext(user_id=who["user_id"], project_id=who["project_id"], roles=who["roles"],
                                  auth_token=request["token"], service_catalog=who["catalog"])


def _backend(ctx: Any, site: str) -> Any:
    """The backend's driver, made as cinder-volume's manager makes it."""
    from cinder.volume import configuration, manager
    from cinder.volume.drivers import rbd

    conf = configuration.Configuration(manager.volume_backend_opts, config_group=site)
    driver = rbd.RBDDriver(configuration=conf, db=None, host=BACKEND_HOST.format(site=site))
    driver.do_setup(ctx)
    driver.check_for_setup_error()
    return driver


def _volume(ctx: Any, request: dict[str, Any]) -> Any:
    from cinder import objects

    return objects.Volume(context=ctx, id=request["volume_id"], size=request.get("size_gb", 1),
                          volume_type=None, volume_type_id=None, encryption_key_id=None, _name_id=None,
                          multiattach=False,
                          host=BACKEND_HOST.format(site=request["deployment"]["site"]) + "#" +
                          request["deployment"]["site"])


def clone_image(request: dict[str, Any]) -> dict[str, Any]:
    from cinder.image import glance

    ctx = _context(request)
    image_service, image_id = glance.get_remote_image_service(ctx, request["image_id"])
    direct_url, locations = image_service.get_location(ctx, image_id)
    seen = {"direct_url": direct_url, "locations": [dict(loc) for loc in locations or []]}
    if not request.get("clone", True):
        return seen
    image_meta = image_service.show(ctx, image_id)
    driver = _backend(ctx, request["deployment"]["site"])
    volume = _volume(ctx, request)
    _update, cloned = driver.clone_image(ctx, volume, (direct_url, locations), image_meta, image_service)
    return {**seen, "cloned": cloned, "volume_name": volume.name}


def delete_volume(request: dict[str, Any]) -> None:
    ctx = _context(request)
    _backend(ctx, request["deployment"]["site"]).delete_volume(_volume(ctx, request))


def _handle(action: Any) -> Any:
    def handler(request: dict[str, Any]) -> Any:
        _configure(request)
        return action(request)
    return handler


if __name__ == "__main__":
    _common.run({"clone_image": _handle(clone_image), "delete_volume": _handle(delete_volume)})
