"""Keep connection passwords out of logs and error messages: parse the URI, never pattern-match `user:pw@`.

    redact_uri("mongodb://nfc:pa/ss?w#rd@db:27017/?w=1")   -> "mongodb://nfc:***@db:27017/?w=1"
    encode_userinfo("redis://:pa/ss@h:6379/0")             -> "redis://:pa%2Fss@h:6379/0"  (what drivers get)
    install_log_redaction()                                # every log record scrubbed of $NFC_* secrets

How a URI with unescaped characters in its password is read (MongoDB, Redis, ClickHouse alike): the
user info runs from after `scheme://` to the LAST `@` of the URI, the user ends at its first `:`, and
the password is everything between, so a password may hold any character (`/`, `?`, `#`, `@`, `:`). An
`@` anywhere after the host (a query value) must therefore be written `%40`. Drivers parse the
authority at the first `/`, `?` or `#` (RFC 3986) and then echo the whole URI in their errors (pymongo's
InvalidURI does), so the URI is handed to them with the user info percent-encoded (`encode_userinfo`;
already-encoded values stay as they are), and every error text the project emits goes through `scrub`.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import quote, unquote

__all__ = [
    "SECRET_ENV",
    "URI_ENV",
    "ParsedUri",
    "encode_userinfo",
    "env_secrets",
    "install_log_redaction",
    "parse_uri",
    "redact_uri",
    "scrub",
    "uri_secrets",
]

MASK = "***"
# connection URIs the project reads from the environment, and plain secrets
URI_ENV = ("NFC_MONGO_URI", "NFC_NEWS_MONGO_URI", "NFC_REDIS_URL", "NFC_CLICKHOUSE_URL")
SECRET_ENV = ("NFC_API_KEY",)
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
# options with secret values, e.g. tlsCertificateKeyFilePassword, authMechanismProperties=AWS_SESSION_TOKEN:...
_SECRET_OPTION = re.compile(r"(?i)([?&][^=&]*(?:password|secret|token|authmechanismproperties)[^=&]*=)[^&]*")


@dataclass(frozen=True)
class ParsedUri:
    """A URI split as the module docstring says; `password` is None when the URI has none."""

    scheme: str  # "mongodb://"
    user: str | None  # None: no user info at all
    password: str | None
    rest: str  # hosts, path, query

    def join(self, user: str | None, password: str | None) -> str:
        if user is None:
            return self.scheme + self.rest
        return f"{self.scheme}{user}{'' if password is None else ':' + password}@{self.rest}"


def parse_uri(uri: str) -> ParsedUri | None:
    """`uri` split into scheme, user, password and the rest; None when it has no `scheme://`."""
    scheme = _SCHEME.match(uri)
    if scheme is None:
        return None
    after = uri[scheme.end():]
    at = after.rfind("@")
    if at < 0:
        return ParsedUri(scheme.group(), None, None, after)
    user, colon, password = after[:at].partition(":")
    return ParsedUri(scheme.group(), user, password if colon else None, after[at + 1:])


def redact_uri(uri: str) -> str:
    """`uri` with its password and secret query options replaced by `***`, safe to log."""
    parsed = parse_uri(uri)
    if parsed is None:
        return _SECRET_OPTION.sub(lambda m: f"{m[1]}{MASK}", uri)
    rest = _SECRET_OPTION.sub(lambda m: f"{m[1]}{MASK}", parsed.rest)
    return ParsedUri(parsed.scheme, parsed.user, parsed.password, rest).join(
        parsed.user, None if parsed.password is None else MASK)


def encode_userinfo(uri: str) -> str:
    """`uri` with user and password percent-encoded, so a driver's RFC 3986 parser reads the same password."""
    parsed = parse_uri(uri)
    if parsed is None or parsed.user is None:
        return uri
    encode = lambda value: quote(unquote(value), safe="")  # noqa: E731 - idempotent on encoded values
    return parsed.join(encode(parsed.user), None if parsed.password is None else encode(parsed.password))


def uri_secrets(uri: str) -> set[str]:
    """Every spelling of the URI's password (as written, decoded, encoded) and of its secret options' values."""
    parsed = parse_uri(uri)
    found: set[str] = set()
    if parsed is not None and parsed.password:
        found |= {parsed.password, unquote(parsed.password), quote(unquote(parsed.password), safe="")}
    rest = parsed.rest if parsed is not None else uri
    for match in _SECRET_OPTION.finditer(rest):
        value = rest[match.end(1):match.end()]
        found |= {value, unquote(value)}
    return {secret for secret in found if secret}


def env_secrets(environ: Mapping[str, str] = os.environ) -> set[str]:
    """The passwords of the NFC_* URIs and the NFC_* secrets set in `environ`."""
    found = {environ[name] for name in SECRET_ENV if environ.get(name)}
    for name in URI_ENV:
        if environ.get(name):
            found |= uri_secrets(environ[name])
    return found


def scrub(text: object, secrets: Iterable[str] = (), uris: Iterable[str] = ()) -> str:
    """`text` with each of `uris` redacted and every secret (and every password of `uris`) replaced by `***`;
    longest first, so a secret that contains another is hidden whole."""
    result = str(text)
    hidden = set(secrets)
    for uri in uris:
        result = result.replace(uri, redact_uri(uri))
        hidden |= uri_secrets(uri)
    for secret in sorted(hidden, key=len, reverse=True):
        result = result.replace(secret, MASK)
    return result


def install_log_redaction(environ: Mapping[str, str] = os.environ, extra: Iterable[str] = ()) -> None:
    """Scrub every log record made from now on in this process (message, arguments, traceback) of the
    secrets in `environ` (`env_secrets`) and `extra`. Installed as the log-record factory, so it holds for
    every handler, also those a framework (BentoML, uvicorn) configures later; installing again adds secrets."""
    secrets = env_secrets(environ) | set(extra)
    if not secrets:
        return
    previous = logging.getLogRecordFactory()
    if isinstance(previous, _RedactingFactory):
        previous.secrets |= secrets
        return
    logging.setLogRecordFactory(_RedactingFactory(previous, secrets))


class _RedactingFactory:
    """A log-record factory that formats the record's message and traceback once, scrubbed."""

    def __init__(self, make: Callable[..., logging.LogRecord], secrets: set[str]) -> None:
        self.make, self.secrets = make, secrets

    def __call__(self, *args: object, **kwargs: object) -> logging.LogRecord:
        record = self.make(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a malformed format string: let the handler report it as usual
            return record
        record.msg, record.args = scrub(message, self.secrets), None
        if record.exc_info and record.exc_info[0] is not None:
            record.exc_text = scrub(logging.Formatter().formatException(record.exc_info), self.secrets)
            record.exc_info = None  # handlers print exc_text; none may format the raw traceback again
        if record.stack_info:
            record.stack_info = scrub(record.stack_info, self.secrets)
        return record
