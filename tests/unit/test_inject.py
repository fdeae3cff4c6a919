"""Property injection at import (seed 4.3)."""

from __future__ import annotations

import pytest

from edgesync.config import InjectConfig
from edgesync.errors import ConfigError
from edgesync.importer.inject import parse_inject_option, properties_to_inject

SEED_CONFIG = InjectConfig(
    properties=parse_inject_option("PROPERTY1:value,PROPERTY2:value;another value"),
    ignore_user_roles=("admin",),
)


def test_seed_inject_syntax() -> None:
    assert parse_inject_option("PROPERTY1:value,PROPERTY2:value;another value") == {
        "PROPERTY1": "value",
        "PROPERTY2": "value;another value",
    }


def test_non_admin_gets_the_properties() -> None:
    assert properties_to_inject(SEED_CONFIG, ["member", "reader"]) == {
        "PROPERTY1": "value", "PROPERTY2": "value;another value"}


def test_user_with_no_roles_gets_the_properties() -> None:
    assert properties_to_inject(SEED_CONFIG, []) == SEED_CONFIG.properties


def test_any_ignored_role_means_nothing_injected() -> None:
    assert properties_to_inject(SEED_CONFIG, ["member", "admin"]) == {}
    assert properties_to_inject(SEED_CONFIG, iter(["Admin"])) == {}


def test_several_ignored_roles() -> None:
    cfg = InjectConfig(properties={"k": "v"}, ignore_user_roles=("admin", "service"))
    assert properties_to_inject(cfg, ["service"]) == {}
    assert properties_to_inject(cfg, ["member"]) == {"k": "v"}


def test_no_ignored_roles_injects_for_everyone() -> None:
    cfg = InjectConfig(properties={"k": "v"})
    assert properties_to_inject(cfg, ["admin"]) == {"k": "v"}


def test_nothing_configured_injects_nothing() -> None:
    assert properties_to_inject(InjectConfig(), ["member"]) == {}


def test_result_is_a_copy_the_caller_may_change() -> None:
    got = properties_to_inject(SEED_CONFIG, ["member"])
    got["PROPERTY1"] = "changed"
    assert SEED_CONFIG.properties["PROPERTY1"] == "value"


@pytest.mark.parametrize("text, expected", [
    ("", {}),
    ("  ", {}),
    ("a:1,", {"a": "1"}),
    (" a : 1 , b:2 ", {"a": "1", "b": "2"}),
    ("url:http://example.org:8080/x", {"url": "http://example.org:8080/x"}),
    ("empty:", {"empty": ""}),
])
def test_parse_inject_option_details(text: str, expected: dict[str, str]) -> None:
    assert parse_inject_option(text) == expected


@pytest.mark.parametrize("text, complaint", [
    ("novalue", "not a 'property:value' pair"),
    ("a:1,:2", "not a 'property:value' pair"),
    ("a:1,a:2", "given twice"),
])
def test_parse_inject_option_errors(text: str, complaint: str) -> None:
    with pytest.raises(ConfigError, match=complaint):
        parse_inject_option(text)
