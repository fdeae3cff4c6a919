"""Loading hub.toml and the site files: what is accepted, and every refusal
naming the file and what to fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgesync.config import load_hub, load_site, load_sites
from edgesync.errors import ConfigError


def site(directory: Path, name: str, role: str = "edge", *, extra: str = "", store: str | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.toml"
    store = store if store is not None else f'type = "file"\npath = "stores/{name}"\n'
    path.write_text(f'name = "{name}"\nrole = "{role}"\n{extra}\n[store]\n{store}')
    return path


def three_sites(directory: Path) -> Path:
    sites = directory / "sites"
    site(sites, "central", "central")
    site(sites, "dcn0")
    site(sites, "dcn1")
    return sites


def hub_toml(directory: Path, hub: str = "", rest: str = "") -> Path:
    three_sites(directory)
    (directory / "tokens.toml").write_text('[tokens.t]\nuser = "u"\nproject = "p"\n')
    path = directory / "hub.toml"
    path.write_text(
        '[hub]\nstate_dir = "state"\nsites_dir = "sites"\ntokens_file = "tokens.toml"\n'
        'tls = { plaintext = true }\n'
        f"{hub}\n{rest}"
    )
    return path


def refused(load, *args) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError) as info:
        load(*args)
    return info.value.message


# --- sites ---------------------------------------------------------------------------


def test_a_site_with_defaults(tmp_path: Path) -> None:
    s = load_site(site(tmp_path, "dcn0"))
    assert (s.name, s.role, s.availability_zone) == ("dcn0", "edge", "dcn0")
    assert s.compute_availability_zone == s.storage_availability_zone == "dcn0"
    assert s.store.type == "file" and s.store.path == (tmp_path / "stores" / "dcn0").resolve()
    assert s.store.description == "dcn0 (file)" and not s.store.read_only and not s.is_central


def test_an_rbd_site(tmp_path: Path) -> None:
    s = load_site(site(tmp_path, "dcn1", store='type = "rbd"\nceph_conf = "/etc/ceph/dcn1.conf"\n'
                                              'user = "glance"\nconnect_timeout_s = 3\n'))
    assert (s.store.type, s.store.pool, s.store.user, s.store.keyring) == ("rbd", "images", "glance", None)
    assert s.store.ceph_conf == Path("/etc/ceph/dcn1.conf") and s.store.connect_timeout_s == 3.0


def test_az_mismatch_is_refused_naming_the_fix(tmp_path: Path) -> None:
    path = site(tmp_path, "dcn0", extra='availability_zone = "az0"\ncompute_availability_zone = "az0"\n'
                                       'storage_availability_zone = "az0-storage"\n')
    message = refused(load_site, path)
    assert str(path) in message
    assert "one availability zone for Nova and Cinder" in message and "set them equal" in message
    assert "az0-storage" in message


def test_compute_and_storage_az_default_to_the_site_az(tmp_path: Path) -> None:
    s = load_site(site(tmp_path, "dcn0", extra='availability_zone = "az-edge-0"\n'))
    assert s.compute_availability_zone == s.storage_availability_zone == "az-edge-0"


def test_unknown_store_type(tmp_path: Path) -> None:
    path = site(tmp_path, "dcn0", store='type = "swift"\n')
    message = refused(load_site, path)
    assert str(path) in message and "'type' must be one of file, rbd" in message and "swift" in message


@pytest.mark.parametrize("body, fragment", [
    ('role = "edge"\n[store]\ntype = "file"\npath = "x"\n', "'name' is required"),
    ('name = "a b"\nrole = "edge"\n[store]\ntype = "file"\npath = "x"\n', "'name' must be letters"),
    ('name = "x"\nrole = "hub"\n[store]\ntype = "file"\npath = "x"\n', "'role' must be one of central, edge"),
    ('name = "x"\nrole = "edge"\n', "'type' is required"),
    ('name = "x"\nrole = "edge"\n[store]\ntype = "file"\n', "'path' is required"),
    ('name = "x"\nrole = "edge"\n[store]\ntype = "rbd"\n', "'ceph_conf' is required"),
    ('name = "x"\nrole = "edge"\n[store]\ntype = "file"\npath = 5\n', "'path' must be a string"),
    ('name = "x"\nrole = "edge"\n[store]\ntype = "file"\npath = "x"\nread_only = "no"\n', "'read_only' must be true or false"),
    ('name = "x"\nrole = "edge"\n[store]\ntype = "rbd"\nceph_conf = "c"\nconnect_timeout_s = true\n',
     "not a boolean"),
    ('name = "x"\nrole = \n', "not valid TOML"),
])
def test_site_file_mistakes(tmp_path: Path, body: str, fragment: str) -> None:
    path = tmp_path / "x.toml"
    path.write_text(body)
    message = refused(load_site, path)
    assert fragment in message and str(path) in message


def test_missing_site_file(tmp_path: Path) -> None:
    assert "no such file" in refused(load_site, tmp_path / "nope.toml")


def test_three_sites_load_in_name_order(tmp_path: Path) -> None:
    sites = load_sites(three_sites(tmp_path))
    assert [s.name for s in sites] == ["central", "dcn0", "dcn1"]
    assert [s.is_central for s in sites] == [True, False, False]


def test_two_centrals_are_refused(tmp_path: Path) -> None:
    sites = three_sites(tmp_path)
    site(sites, "dcn1", "central")
    message = refused(load_sites, sites)
    assert "exactly one site must have role = \"central\"" in message
    assert "central" in message and "dcn1" in message


def test_no_central_is_refused(tmp_path: Path) -> None:
    sites = tmp_path / "sites"
    site(sites, "dcn0")
    assert "found none" in refused(load_sites, sites)


def test_one_az_for_two_stores_is_refused(tmp_path: Path) -> None:
    sites = three_sites(tmp_path)
    site(sites, "dcn1", extra='availability_zone = "dcn0"\n')
    message = refused(load_sites, sites)
    assert "availability zone 'dcn0' maps to two stores (dcn0 and dcn1)" in message


def test_a_name_used_twice_is_refused(tmp_path: Path) -> None:
    sites = three_sites(tmp_path)
    (sites / "zz.toml").write_text('name = "dcn0"\nrole = "edge"\navailability_zone = "other"\n'
                                   '[store]\ntype = "file"\npath = "x"\n')
    assert "site name 'dcn0' is used twice" in refused(load_sites, sites)


def test_an_empty_sites_dir_is_refused(tmp_path: Path) -> None:
    (tmp_path / "sites").mkdir()
    assert "no site files" in refused(load_sites, tmp_path / "sites")


# --- hub -------------------------------------------------------------------------------


def test_hub_defaults(tmp_path: Path) -> None:
    cfg = load_hub(hub_toml(tmp_path))
    assert (cfg.host, cfg.port, cfg.public_url) == ("127.0.0.1", 9292, "http://127.0.0.1:9292")
    assert cfg.state_dir == (tmp_path / "state").resolve()
    assert cfg.catalog_path.name == "catalog.sqlite3" and cfg.staging_dir.name == "staging"
    assert cfg.central.name == "central" and cfg.site("dcn1") is not None and cfg.site("x") is None
    assert cfg.auth == "token" and cfg.tokens_file == (tmp_path / "tokens.toml").resolve()
    assert cfg.imports.enabled_methods == ("glance-direct", "web-download", "copy-image")
    assert cfg.imports.uri_filter.allowed_ports == (80, 443)
    assert cfg.imports.convert_to_raw and not cfg.show_locations


def test_hub_with_every_option(tmp_path: Path) -> None:
    cfg = load_hub(hub_toml(
        tmp_path, 'listen = "0.0.0.0:9393"\npublic_url = "https://hub.example/"\nshow_locations = true\n',
        '[import]\nenabled_methods = ["glance-direct"]\ndisk_formats = ["raw"]\nconvert_to_raw = false\n'
        'max_image_size_bytes = 1024\nlock_ttl_s = 30\nweb_download_timeout_s = 5\n'
        '[import.uri_filter]\nallowed_hosts = ["images.example"]\nallowed_ports = []\n'
        'disallowed_ports = [22]\n'
        '[import.inject]\nproperties = {hw_machine_type = "q35"}\nignore_user_roles = ["admin"]\n'))
    assert (cfg.host, cfg.port, cfg.public_url) == ("0.0.0.0", 9393, "https://hub.example")
    imp = cfg.imports
    assert imp.enabled_methods == ("glance-direct",) and imp.disk_formats == ("raw",)
    assert not imp.convert_to_raw and imp.max_image_size_bytes == 1024 and imp.lock_ttl_s == 30.0
    assert imp.uri_filter.allowed_hosts == ("images.example",) and imp.uri_filter.allowed_ports == ()
    assert imp.uri_filter.disallowed_ports == (22,)
    assert imp.inject.properties == {"hw_machine_type": "q35"} and imp.inject.ignore_user_roles == ("admin",)


def test_noauth_needs_no_tokens_file(tmp_path: Path) -> None:
    path = hub_toml(tmp_path, 'auth = "noauth"\n')
    path.write_text(path.read_text().replace('tokens_file = "tokens.toml"\n', ""))
    cfg = load_hub(path)
    assert cfg.auth == "noauth" and cfg.tokens_file is None


@pytest.mark.parametrize("hub, rest, fragment", [
    ('listen = "9292"\n', "", "'listen' must be HOST:PORT"),
    ('listen = "host:port"\n', "", "'listen' must be HOST:PORT"),
    ('auth = "kerberos"\n', "", "'auth' must be one of token, keystone, noauth"),
    ('auth = "keystone"\n', "", "a [keystone] table is required when auth = \"keystone\""),
    ("show_locations = 1\n", "", "'show_locations' must be true or false"),
    ("", '[import]\nenabled_methods = ["glance-download"]\n', "unknown import method 'glance-download'"),
    ("", "[import]\nlock_ttl_s = \"10\"\n", "'lock_ttl_s' must be int or float"),
    ("", "[import]\nlock_ttl_s = true\n", "not a boolean"),
    ("", "[import]\nmax_image_size_bytes = true\n", "not a boolean"),
    ("", "[import.uri_filter]\nallowed_ports = [\"80\"]\n", "list of integers"),
    ("", "[import.uri_filter]\nallowed_schemes = [1]\n", "list of strings"),
    ("", "[import.inject]\nproperties = {a = 1}\n", "'properties' values must be strings"),
])
def test_hub_file_mistakes(tmp_path: Path, hub: str, rest: str, fragment: str) -> None:
    path = hub_toml(tmp_path, hub, rest)
    message = refused(load_hub, path)
    assert fragment in message and str(path) in message


def test_token_auth_needs_a_tokens_file(tmp_path: Path) -> None:
    path = hub_toml(tmp_path)
    path.write_text(path.read_text().replace('tokens_file = "tokens.toml"\n', ""))
    assert "'tokens_file' is required when auth = \"token\"" in refused(load_hub, path)


def test_site_errors_surface_through_the_hub_file(tmp_path: Path) -> None:
    path = hub_toml(tmp_path)
    site(tmp_path / "sites", "dcn1", "central")
    assert "exactly one site" in refused(load_hub, path)


def test_missing_state_and_sites_settings(tmp_path: Path) -> None:
    path = tmp_path / "hub.toml"
    path.write_text('[hub]\nsites_dir = "sites"\nauth = "noauth"\ntls = { plaintext = true }\n')
    assert "'state_dir' is required" in refused(load_hub, path)


def test_read_timeouts_and_quota_default_and_are_read(tmp_path: Path) -> None:
    cfg = load_hub(hub_toml(tmp_path))
    assert (cfg.read_timeouts.header_s, cfg.read_timeouts.body_s, cfg.read_timeouts.idle_s) == (20, 60, 75)
    assert cfg.quota.image_size_total_mib == -1 and cfg.quota.projects == {}
    cfg = load_hub(hub_toml(tmp_path / "set", "", '[hub.http]\nheader_timeout_s = 2.5\nbody_timeout_s = 7\n'
                            '[hub.quota]\nimage_size_total = 1024\n[hub.quota.projects]\nbig = -1\nsmall = 0\n'))
    assert (cfg.read_timeouts.header_s, cfg.read_timeouts.body_s, cfg.read_timeouts.idle_s) == (2.5, 7, 75)
    assert cfg.quota.image_size_total_mib == 1024 and cfg.quota.projects == {"big": -1, "small": 0}


@pytest.mark.parametrize("rest, fragment", [
    ("[hub.http]\nbody_timeout_s = 0\n", "must be > 0"),
    ("[hub.http]\nidle_timeout_s = \"75\"\n", "'idle_timeout_s' must be int or float"),
    ("[hub.quota]\nimage_size_total = -2\n", "'image_size_total' must be a limit in MiB"),
    ("[hub.quota.projects]\np = \"1G\"\n", "'p' must be a limit in MiB"),
])
def test_read_timeout_and_quota_mistakes(tmp_path: Path, rest: str, fragment: str) -> None:
    path = hub_toml(tmp_path, "", rest)
    assert fragment in refused(load_hub, path)
