"""The web-download URI filter: every branch of the seed's decision logic (4.2)."""

from __future__ import annotations

import pytest

from edgesync.config import UriFilter
from edgesync.errors import BadRequest
from edgesync.importer.uri_filter import check_uri

DEFAULTS = UriFilter()
# The seed's 4.2.1 example: ftp added to the allowed schemes, ports left at 80/443.
FTP_ALLOWED = UriFilter(allowed_schemes=("http", "https", "ftp"))


def rejected(uri: str, rules: UriFilter) -> str:
    with pytest.raises(BadRequest) as info:
        check_uri(uri, rules)
    return info.value.message


# --- the seed's examples and the defaults ------------------------------------


@pytest.mark.parametrize("uri", [
    "http://example.org/img.qcow2",
    "https://example.org/img.qcow2",
    "http://example.org:80/img",
    "https://example.org:443/img",
])
def test_defaults_accept_http_and_https_on_default_ports(uri: str) -> None:
    check_uri(uri, DEFAULTS)


def test_defaults_reject_ftp_by_scheme() -> None:
    message = rejected("ftp://h/x", DEFAULTS)
    assert "scheme 'ftp'" in message and "allowed schemes (http, https)" in message


def test_defaults_reject_other_explicit_ports() -> None:
    message = rejected("http://example.org:8080/img", DEFAULTS)
    assert "port 8080" in message and "allowed ports (80, 443)" in message


def test_seed_ftp_allowed_without_port_is_accepted() -> None:
    check_uri("ftp://example.org/some/resource", FTP_ALLOWED)


def test_seed_ftp_with_explicit_default_port_is_rejected_by_port() -> None:
    assert "port 21" in rejected("ftp://example.org:21/some/resource", FTP_ALLOWED)


# --- 1. scheme ------------------------------------------------------------------


@pytest.mark.parametrize("uri", ["example.org/img", "/etc/passwd", "//example.org/img"])
def test_missing_scheme_is_rejected(uri: str) -> None:
    assert "no scheme" in rejected(uri, DEFAULTS)


def test_missing_scheme_is_rejected_even_with_no_lists_at_all() -> None:
    assert "no scheme" in rejected("example.org/img", UriFilter(allowed_schemes=(), allowed_ports=()))


def test_scheme_allowlist_wins_over_blocklist() -> None:
    # In both lists: the allowlist is obeyed and the blocklist ignored.
    rules = UriFilter(allowed_schemes=("http",), disallowed_schemes=("http",))
    check_uri("http://example.org/x", rules)


def test_scheme_not_in_allowlist_is_rejected_even_if_not_blocked() -> None:
    rules = UriFilter(allowed_schemes=("https",), disallowed_schemes=("ftp",))
    assert "scheme 'http'" in rejected("http://example.org/x", rules)


def test_scheme_blocklist_applies_without_allowlist() -> None:
    rules = UriFilter(allowed_schemes=(), disallowed_schemes=("ftp",), allowed_ports=())
    message = rejected("ftp://example.org/x", rules)
    assert "scheme 'ftp' is in the disallowed schemes (ftp)" in message
    check_uri("gopher://example.org/x", rules)


def test_scheme_is_case_insensitive() -> None:
    check_uri("HTTP://example.org/x", UriFilter(allowed_schemes=("http",)))
    check_uri("http://example.org/x", UriFilter(allowed_schemes=("HTTP",)))
    rules = UriFilter(allowed_schemes=(), disallowed_schemes=("ftp",))
    assert "scheme 'ftp'" in rejected("FTP://example.org/x", rules)


# --- 2. host ----------------------------------------------------------------------


@pytest.mark.parametrize("uri", ["file:///etc/passwd", "http:///x", "http://user@/x"])
def test_missing_host_is_rejected(uri: str) -> None:
    rules = UriFilter(allowed_schemes=("http", "file"))
    assert "no host" in rejected(uri, rules)


def test_host_allowlist() -> None:
    rules = UriFilter(allowed_hosts=("images.example.org",))
    check_uri("http://images.example.org/x", rules)
    message = rejected("http://evil.example.org/x", rules)
    assert "host 'evil.example.org' is not in the allowed hosts (images.example.org)" in message


def test_host_allowlist_wins_over_blocklist() -> None:
    rules = UriFilter(allowed_hosts=("a.example",), disallowed_hosts=("a.example", "b.example"))
    check_uri("http://a.example/x", rules)
    assert "host 'b.example' is not in the allowed hosts" in rejected("http://b.example/x", rules)


def test_host_blocklist_applies_without_allowlist() -> None:
    rules = UriFilter(disallowed_hosts=("169.254.169.254", "localhost"))
    assert "host '169.254.169.254' is in the disallowed hosts" in rejected(
        "http://169.254.169.254/latest/meta-data", rules)
    check_uri("http://example.org/x", rules)


def test_host_is_case_insensitive_and_ignores_userinfo() -> None:
    rules = UriFilter(disallowed_hosts=("Evil.Example",))
    assert "host 'evil.example'" in rejected("http://user:pw@EVIL.example/x", rules)
    check_uri("http://user:pw@Good.Example/x", UriFilter(allowed_hosts=("good.example",)))


def test_ipv6_host_compares_without_brackets() -> None:
    rules = UriFilter(allowed_hosts=("::1",), allowed_ports=(8080,))
    check_uri("http://[::1]:8080/x", rules)
    assert "host '::2'" in rejected("http://[::2]:8080/x", rules)


# --- 3. port ----------------------------------------------------------------------


def test_port_not_checked_when_absent_even_with_lists() -> None:
    rules = UriFilter(allowed_ports=(8443,), disallowed_ports=(80,))
    check_uri("http://example.org/x", rules)


def test_port_allowlist_wins_over_blocklist() -> None:
    rules = UriFilter(allowed_ports=(8080,), disallowed_ports=(8080,))
    check_uri("http://example.org:8080/x", rules)
    assert "port 9090 is not in the allowed ports (8080)" in rejected("http://example.org:9090/x", rules)


def test_port_blocklist_applies_without_allowlist() -> None:
    rules = UriFilter(allowed_ports=(), disallowed_ports=(22, 25))
    assert "port 25 is in the disallowed ports (22, 25)" in rejected("http://example.org:25/x", rules)
    check_uri("http://example.org:8080/x", rules)


def test_no_port_lists_accept_any_port() -> None:
    check_uri("http://example.org:65535/x", UriFilter(allowed_ports=()))


def test_explicit_port_zero_is_checked() -> None:
    assert "port 0" in rejected("http://example.org:0/x", DEFAULTS)


# --- malformed ------------------------------------------------------------------


@pytest.mark.parametrize("uri", [
    "http://example.org:http/x",    # non-numeric port
    "http://example.org:99999/x",   # out of range
    "http://example.org:/x",        # empty port
    "http://[::1/x",                # unclosed IPv6 bracket
    "",
    "   ",
])
def test_malformed_uri_is_bad_request(uri: str) -> None:
    rules = UriFilter(allowed_ports=())
    rejected(uri, rules)


def test_levels_are_checked_in_order_scheme_first() -> None:
    # Bad on every level: the scheme is what gets reported.
    rules = UriFilter(allowed_hosts=("good.example",))
    assert "scheme 'ftp'" in rejected("ftp://bad.example:21/x", rules)
    # Scheme fine, host and port bad: the host is reported.
    assert "host 'bad.example'" in rejected("http://bad.example:21/x", rules)


# --- hosts by address, not by spelling ---------------------------------------------


@pytest.mark.parametrize("uri", [
    "http://0x7f.1/x", "http://017700000001/x", "http://127.1/x", "http://[::ffff:127.0.0.1]/x",
    "http://0.0.0.0/x", "http://\uff11\uff12\uff17.\uff10.\uff10.\uff11/x", "http://127\u30020\u30020\u30021/x",
])
def test_a_blocked_network_refuses_every_literal_spelling(uri: str) -> None:
    assert "in the disallowed hosts (127.0.0.0/8)" in rejected(uri, UriFilter(disallowed_hosts=("127.0.0.0/8",)))


def test_a_blocked_address_entry_matches_its_other_spellings() -> None:
    assert "host '127.0.0.1' is in the disallowed hosts" in rejected(
        "http://0x7f.0.0.1/x", UriFilter(disallowed_hosts=("127.0.0.1",)))


def test_name_spellings_are_put_in_one_form() -> None:
    assert "host 'localhost'" in rejected("http://LocalHost./x", UriFilter(disallowed_hosts=("localhost",)))
    check_uri("http://\uff11\uff12\uff17.0.0.1/x", UriFilter(allowed_hosts=("127.0.0.1",)))
