"""Passwords are found by parsing the URI (any character allowed) and never reach a log line or an error."""

from __future__ import annotations

import logging

import pytest

from neuralfusion.redact import encode_userinfo, install_log_redaction, parse_uri, redact_uri, scrub, uri_secrets

# a password holding every character that ends an RFC 3986 authority, and the ones that split user info
NASTY = "p/w?x#y@z:1%"


@pytest.mark.parametrize(("uri", "expected"), [
    ("mongodb://127.0.0.1:27017/", "mongodb://127.0.0.1:27017/"),
    ("mongodb://user@h/?w=1", "mongodb://user@h/?w=1"),
    ("mongodb://u:p%40ss@h1:1,h2:2/db?authSource=admin", "mongodb://u:***@h1:1,h2:2/db?authSource=admin"),
    ("mongodb://u:p@ss@h/", "mongodb://u:***@h/"),
    ("mongodb+srv://u:pw@c.example.net/?tlsCertificateKeyFilePassword=k&w=1",
     "mongodb+srv://u:***@c.example.net/?tlsCertificateKeyFilePassword=***&w=1"),
    ("mongodb://h/?authMechanism=MONGODB-AWS&authMechanismProperties=AWS_SESSION_TOKEN:tok",
     "mongodb://h/?authMechanism=MONGODB-AWS&authMechanismProperties=***"),
    (f"mongodb://nfc:{NASTY}@127.0.0.1:27017/db?w=1", "mongodb://nfc:***@127.0.0.1:27017/db?w=1"),
    (f"redis://:{NASTY}@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
    (f"redis://default:{NASTY}@127.0.0.1:6379/0", "redis://default:***@127.0.0.1:6379/0"),
    (f"clickhouse://nfc:{NASTY}@127.0.0.1:9000/market", "clickhouse://nfc:***@127.0.0.1:9000/market"),
])
def test_redact_uri_hides_passwords_with_any_character(uri: str, expected: str) -> None:
    assert redact_uri(uri) == expected


@pytest.mark.parametrize("scheme", ["mongodb", "redis", "clickhouse"])
def test_drivers_read_the_password_the_parser_reads(scheme: str) -> None:
    """encode_userinfo hands drivers the same user and password (they split the authority at '/', '?', '#')."""
    uri = f"{scheme}://nfc:{NASTY}@127.0.0.1:1234/db"
    encoded = encode_userinfo(uri)
    assert encode_userinfo(encoded) == encoded  # already encoded stays as it is
    if scheme == "mongodb":
        from pymongo.uri_parser import parse_uri as mongo_parse

        parsed = mongo_parse(encoded)
        assert (parsed["username"], parsed["password"], parsed["nodelist"]) == ("nfc", NASTY, [("127.0.0.1", 1234)])
    elif scheme == "redis":
        from redis.connection import parse_url

        assert parse_url(encoded)["password"] == NASTY and parse_url(encoded)["host"] == "127.0.0.1"
    else:
        from clickhouse_driver.util.helpers import parse_url

        host, options = parse_url(encoded)
        assert (host, options["user"], options["password"], options["port"]) == ("127.0.0.1", "nfc", NASTY, 1234)
    assert parse_uri(uri).password == NASTY and NASTY in uri_secrets(uri)


def test_scrub_hides_every_spelling_of_the_password() -> None:
    uri = f"mongodb://nfc:{NASTY}@h/"
    text = f"InvalidURI: {uri} and {encode_userinfo(uri)}"
    cleaned = scrub(text, uris=[uri])
    assert NASTY not in cleaned and encode_userinfo(uri).split("@")[0].split(":")[-1] not in cleaned
    assert "mongodb://nfc:***@h/" in cleaned


def test_log_records_are_scrubbed_for_every_handler(caplog: pytest.LogCaptureFixture) -> None:
    """Messages, arguments and tracebacks: the record factory scrubs them before any handler sees them."""
    previous = logging.getLogRecordFactory()
    try:
        install_log_redaction({"NFC_REDIS_URL": f"redis://:{NASTY}@h:6379/0", "NFC_API_KEY": "key-123456"})
        log = logging.getLogger("nfc.test.redact")
        with caplog.at_level(logging.INFO, logger="nfc.test.redact"):
            log.info("connecting with %s and key-123456", f"password {NASTY}")
            try:
                raise ValueError(f"bad uri redis://:{NASTY}@h")
            except ValueError:
                log.exception("failed")
        text = caplog.text
        assert NASTY not in text and "key-123456" not in text and "password ***" in text
        assert "ValueError: bad uri redis://:***@h" in text
    finally:
        logging.setLogRecordFactory(previous)
