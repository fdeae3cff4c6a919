"""The hub's Keystone auth with a fake validator: the cache's bounds (size,
TTL, the token's expiry), invalid tokens, Keystone down, and how Keystone's
roles and ids become the routes' Caller. The real Keystone is in
tests/e2e/test_keystone_cli.py."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest

from edgesync.config import KeystoneConfig, load_hub
from edgesync.errors import ConfigError, Forbidden, IdentityUnavailable, Unauthorized
from edgesync.hub.keystone_auth import KeystoneAuthenticator, caller_from
from edgesync.keystone import TokenInfo

NOW = 1_000_000.0
CONFIG = KeystoneConfig(auth_url="http://ks.test/v3", username="hub", password="pw", cache_ttl_s=30.0,
                        cache_size=3, agents={"cred-dcn0": "dcn0", "user-dcn1": "dcn1"})


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


class FakeKeystone:
    """Answers like TokenValidator.validate: TokenInfo, None (not valid), or raises."""

    def __init__(self) -> None:
        self.tokens: dict[str, TokenInfo] = {}
        self.calls: list[str] = []
        self.down = False

    def validate(self, token: str) -> TokenInfo | None:
        self.calls.append(token)
        if self.down:
            raise IdentityUnavailable("Keystone at http://ks.test/v3 can't be reached")
        return self.tokens.get(token)


def info(user: str = "u1", project: str | None = "p1", roles: tuple[str, ...] = ("member", "reader"),
         expires_in: float = 3600.0, cred: str | None = None) -> TokenInfo:
    return TokenInfo(user_id=user, project_id=project, roles=roles, expires_at=NOW + expires_in,
                     application_credential_id=cred)


@pytest.fixture
def keystone() -> FakeKeystone:
    return FakeKeystone()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def auth(keystone: FakeKeystone, clock: Clock) -> KeystoneAuthenticator:
    return KeystoneAuthenticator(CONFIG, keystone.validate, clock)


# --- the cache ---------------------------------------------------------------------


async def test_a_validation_is_reused_until_the_ttl_then_asked_again(
        auth: KeystoneAuthenticator, keystone: FakeKeystone, clock: Clock) -> None:
    keystone.tokens["t"] = info()
    assert (await auth.authenticate("t", None)).user == "u1"
    clock.now += 29
    await auth.authenticate("t", None)
    assert keystone.calls == ["t"]
    clock.now += 1  # the TTL is up: a revocation made meanwhile is seen now
    del keystone.tokens["t"]
    with pytest.raises(Unauthorized, match="not a valid Keystone token"):
        await auth.authenticate("t", None)
    assert keystone.calls == ["t", "t"]


async def test_never_cached_past_the_tokens_expiry(
        auth: KeystoneAuthenticator, keystone: FakeKeystone, clock: Clock) -> None:
    keystone.tokens["t"] = info(expires_in=10)
    await auth.authenticate("t", None)
    clock.now += 10
    with pytest.raises(Unauthorized):
        await auth.authenticate("t", None)
    assert keystone.calls == ["t", "t"]  # asked again, not answered from the cache


async def test_an_invalid_token_is_remembered_as_invalid(
        auth: KeystoneAuthenticator, keystone: FakeKeystone) -> None:
    for _ in range(3):
        with pytest.raises(Unauthorized):
            await auth.authenticate("bad", None)
    assert keystone.calls == ["bad"]


async def test_the_cache_holds_at_most_cache_size_tokens_dropping_the_least_recent(
        auth: KeystoneAuthenticator, keystone: FakeKeystone) -> None:
    for name in "abcd":
        keystone.tokens[name] = info(user=name)
    for name in "abc":
        await auth.authenticate(name, None)
    await auth.authenticate("a", None)  # a is now the most recent
    await auth.authenticate("d", None)  # b goes
    assert len(auth.cache) == 3
    keystone.calls.clear()
    for name in "acd":
        await auth.authenticate(name, None)
    assert keystone.calls == []
    await auth.authenticate("b", None)
    assert keystone.calls == ["b"]


async def test_keystone_down_is_not_cached_and_not_a_401(
        auth: KeystoneAuthenticator, keystone: FakeKeystone) -> None:
    keystone.tokens["t"] = info()
    keystone.down = True
    with pytest.raises(IdentityUnavailable) as raised:
        await auth.authenticate("t", None)
    assert raised.value.http_status == 503 and raised.value.retryable
    keystone.down = False
    assert (await auth.authenticate("t", None)).project == "p1"


async def test_concurrent_requests_with_one_new_token_share_one_validation(
        keystone: FakeKeystone, clock: Clock) -> None:
    keystone.tokens["t"] = info()
    release = asyncio.Event()
    loop = asyncio.get_running_loop()

    def slow_validate(token: str) -> TokenInfo | None:
        asyncio.run_coroutine_threadsafe(release.wait(), loop).result(timeout=10)
        return keystone.validate(token)

    auth = KeystoneAuthenticator(CONFIG, slow_validate, clock)
    waiting = [asyncio.create_task(auth.authenticate("t", None)) for _ in range(5)]
    await asyncio.sleep(0.05)
    release.set()
    callers = await asyncio.gather(*waiting)
    assert {c.user for c in callers} == {"u1"} and keystone.calls == ["t"]


async def test_no_token_is_a_401_without_asking_keystone(
        auth: KeystoneAuthenticator, keystone: FakeKeystone) -> None:
    with pytest.raises(Unauthorized, match="X-Auth-Token"):
        await auth.authenticate(None, None)
    assert keystone.calls == []


# --- roles and ids to the Caller -------------------------------------------------------


@pytest.mark.parametrize(("roles", "is_admin"), [
    (("admin", "member", "reader"), True),
    (("member", "reader"), False),
    (("reader",), False),
])
def test_personas_keep_keystones_role_names(roles: tuple[str, ...], is_admin: bool) -> None:
    caller = caller_from(info(roles=roles), None, CONFIG)
    assert caller.roles == roles and caller.is_admin is is_admin
    assert caller.user == "u1" and caller.project == "p1"


async def test_a_valid_service_token_with_the_service_role_adds_the_service_persona(
        auth: KeystoneAuthenticator, keystone: FakeKeystone) -> None:
    keystone.tokens["user"] = info(roles=("reader",))
    keystone.tokens["nova"] = info(user="nova", project="service", roles=("service",))
    keystone.tokens["other"] = info(user="x", project="p9", roles=("member", "reader"))
    assert (await auth.authenticate("user", "nova")).roles == ("reader", "service")
    assert (await auth.authenticate("user", "other")).roles == ("reader",)  # valid, but not a service
    with pytest.raises(Unauthorized, match="X-Service-Token"):
        await auth.authenticate("user", "forged")


def test_agents_are_known_by_application_credential_or_user_id_never_by_name() -> None:
    by_cred = caller_from(info(user="someone", roles=("reader",), cred="cred-dcn0"), None, CONFIG)
    assert by_cred.agent_site == "dcn0" and by_cred.is_agent_of("dcn0") and "agent" in by_cred.roles
    by_user = caller_from(info(user="user-dcn1"), None, CONFIG)
    assert by_user.is_agent_of("dcn1") and not by_user.is_agent_of("dcn0")
    # a user whose id reads like an agent's name is no agent
    impostor = caller_from(info(user="agent-dcn0"), None, CONFIG)
    assert impostor.agent_site is None and "agent" not in impostor.roles


def test_a_token_scoped_to_no_project_is_refused() -> None:
    with pytest.raises(Forbidden, match="not scoped to a project"):
        caller_from(info(project=None), None, CONFIG)


def test_service_roles_are_configurable() -> None:
    config = replace(CONFIG, service_roles=("admin",))
    assert "service" in caller_from(info(), info(roles=("admin",)), config).roles


# --- [keystone] in hub.toml --------------------------------------------------------------


def _hub(tmp_path: Path, keystone: str) -> Path:
    sites = tmp_path / "sites"
    sites.mkdir()
    for i, name in enumerate(["central", "dcn0"]):
        (sites / f"{name}.toml").write_text(
            f'name = "{name}"\nrole = "{"central" if i == 0 else "edge"}"\n'
            f'[store]\ntype = "file"\npath = "{tmp_path / name}"\n')
    (tmp_path / "hub.password").write_text("s3cret\n")
    path = tmp_path / "hub.toml"
    path.write_text(f'[hub]\nstate_dir = "{tmp_path / "state"}"\nsites_dir = "{sites}"\nauth = "keystone"\ntls = {{ plaintext = true }}\n'
                    f"{keystone}")
    return path


def test_hub_config_reads_the_keystone_table(tmp_path: Path) -> None:
    config = load_hub(_hub(tmp_path, '[keystone]\nauth_url = "http://ks:5000/v3/"\nusername = "edgesync-hub"\n'
                                     'password_file = "hub.password"\ncache_ttl_s = 5\n'
                                     '[keystone.agents]\ndcn0 = "abc123"\n'))
    ks = config.keystone
    assert ks is not None and config.auth == "keystone" and config.tokens_file is None
    assert (ks.auth_url, ks.username, ks.password, ks.cache_ttl_s) == ("http://ks:5000/v3", "edgesync-hub",
                                                                      "s3cret", 5.0)
    assert ks.agents == {"abc123": "dcn0"} and ks.project_name == "service"


@pytest.mark.parametrize(("table", "message"), [
    ("", "a \\[keystone\\] table is required"),
    ('[keystone]\nauth_url = "ks:5000"\nusername = "h"\npassword_file = "hub.password"\n', "auth_url"),
    ('[keystone]\nauth_url = "http://ks/v3"\nusername = "h"\npassword_file = "nope"\n', "password_file"),
    ('[keystone]\nauth_url = "http://ks/v3"\nusername = "h"\npassword_file = "hub.password"\n'
     '[keystone.agents]\ncentral = "x"\n', "not an edge site"),
])
def test_hub_config_says_what_to_fix_in_the_keystone_table(tmp_path: Path, table: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_hub(_hub(tmp_path, table))
