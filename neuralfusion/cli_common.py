"""What every `nfc` command shares: the error rule, the common options, config files and the JSON result.

Exit codes: 0 success, 1 a failure (bad data, a missing or existing file, a refused model, a server that
said no), 2 a usage error (click's UsageError / BadParameter: a wrong option, a bad `--set`). A failure is
one line on stderr naming what to fix, never a traceback (`--log-level DEBUG` logs the traceback too).
A command that ends in a result returns it as a dict; with `--json` it is printed as one JSON object and
stdout holds nothing else (progress and logs go to stderr).

In the core so that the CLI module of every package can import it.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click

from neuralfusion.config_file import ConfigFileError
from neuralfusion.overrides import apply_overrides

__all__ = [
    "DEFAULT_LOG_LEVEL",
    "FAILURES",
    "LOG_LEVELS",
    "OWN_PACKAGES",
    "cli_errors",
    "config_options",
    "configure_logging",
    "data_option",
    "echo_json",
    "embeddings_option",
    "force_option",
    "json_option",
    "json_result",
    "leak_option",
    "live_source_options",
    "log_level_option",
    "needs_extra",
    "out_option",
    "package_version",
    "resolve_config",
    "split_option",
]

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

# errors that mean "this input cannot be used", reported as one line with exit code 1: ValueError covers
# DataError, PackageError, the config errors and pydantic's; OSError covers missing and existing files,
# refused connections and timeouts. A command adds its package's own errors with `cli_errors(also=...)`;
# anything else is a bug and keeps its traceback
FAILURES: tuple[type[Exception], ...] = (ValueError, OSError)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
# a missing module of one of these is a bug of ours, not a missing extra
OWN_PACKAGES = ("neuralfusion", "training", "export", "serving", "nfc")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DEFAULT_LOG_LEVEL = "INFO"
_OWN_HANDLER = "nfc_cli_handler"


def package_version() -> str:
    """The installed distribution's version; a source checkout that was never installed says so."""
    try:
        return importlib.metadata.version("neuralfusioncore")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed: pip install -e .)"


def configure_logging(level: str) -> None:
    """Logs go to stderr at `level`; a later call (the option given again after the subcommand) wins.

    Only the handler installed here is ever adjusted: where the root logger already has handlers (an embedding
    application, pytest's log capture) their configuration is left alone, as `logging.basicConfig` would.
    """
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler()  # stderr
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        setattr(handler, _OWN_HANDLER, True)
        root.addHandler(handler)
    if any(getattr(handler, _OWN_HANDLER, False) for handler in root.handlers):
        root.setLevel(level.upper())


def _set_log_level(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    """`--log-level` on any command sets the level from there on; without it the outermost command sets the
    default, unless logging is set up already (`nfc demo` runs each stage as a nested `nfc` command)."""
    if ctx.resilient_parsing:
        return
    if value is not None:
        configure_logging(value)
    elif ctx.parent is None and not logging.getLogger().handlers:
        configure_logging(DEFAULT_LOG_LEVEL)


def log_level_option(func: F) -> F:
    """`--log-level`, accepted on the group and on every command, so it may come before or after the subcommand."""
    return click.option("--log-level", type=click.Choice(LOG_LEVELS, case_sensitive=False), default=None,
                        expose_value=False, is_eager=True, callback=_set_log_level,
                        help="Log level of the messages on stderr.  [default: INFO]")(func)


def cli_errors(func: F | None = None, *, also: tuple[type[Exception], ...] = ()) -> Any:
    """A FAILURES error (or one of `also`) raised by the command becomes click's one-line error with exit code 1.

    click's own errors (usage: exit 2) pass through untouched. Use as `@cli_errors` or `@cli_errors(also=(...))`.
    """
    caught = (*FAILURES, *also)

    def decorate(command: F) -> F:
        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return command(*args, **kwargs)
            except click.ClickException:
                raise
            except caught as err:
                log.debug("%s failed", command.__name__, exc_info=True)
                raise click.ClickException(str(err) or type(err).__name__) from None
        return wrapper  # type: ignore[return-value]

    return decorate if func is None else decorate(func)


@contextmanager
def needs_extra(extra: str, what: str) -> Iterator[None]:
    """Imports inside the block that fail for lack of an optional extra fail with the install command."""
    try:
        yield
    except ModuleNotFoundError as err:
        if (err.name or "").split(".")[0] in OWN_PACKAGES:
            raise
        raise click.ClickException(f"{what} needs the '{extra}' extra (missing module {err.name!r}): "
                                   f"pip install 'neuralfusioncore[{extra}]'") from None


def echo_json(result: Mapping[str, Any]) -> None:
    """One JSON object on stdout (times, paths and numpy scalars as strings or numbers)."""
    click.echo(json.dumps(result, indent=2, default=_jsonable))


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return str(value)


def json_result(render: Callable[[dict[str, Any]], Iterator[str]] | None = None) -> Callable[[F], F]:
    """Adds `--json`. The command returns its result dict: printed as one JSON object with --json, else as the
    lines `render` makes of it (none without `render`); the dict is also what `main(standalone_mode=False)`
    returns, which is how `nfc demo` reads each stage's result."""

    def decorate(command: F) -> F:
        @json_option
        @functools.wraps(command)
        def wrapper(*args: Any, as_json: bool, **kwargs: Any) -> Any:
            result = command(*args, **kwargs)
            if result is not None:
                if as_json:
                    echo_json(result)
                elif render is not None:
                    for line in render(result):
                        click.echo(line)
            return result
        return wrapper  # type: ignore[return-value]

    return decorate


def resolve_config(base: T, config_path: Path | None, pairs: tuple[str, ...]) -> T:
    """Dataclass `base` updated from `--config FILE` (JSON or TOML), then from `--set KEY=VALUE` pairs.

    A bad file is a failure naming the file; a bad `--set` is a usage error naming the option.
    """
    if config_path is not None:
        try:
            base = apply_overrides(base, (), config_path)
        except ConfigFileError:
            raise
        except ValueError as err:  # unknown keys, wrong types
            raise ConfigFileError(f"{config_path}: {err}") from None
    try:
        return apply_overrides(base, pairs)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--set") from None


def config_options(config_name: str) -> Callable[[F], F]:
    """`--config FILE` (JSON or TOML) and `--set KEY=VALUE` for the command's `config_name` dataclass, read together
    by `resolve_config(base, config_path, sets)`."""
    def apply(func: F) -> F:
        func = click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
                            help=f"Override a {config_name} field.")(func)
        return click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                            help=f"{config_name} fields, JSON or TOML (by suffix); --set overrides them.")(func)
    return apply


json_option = click.option("--json", "as_json", is_flag=True,
                           help="Print the result as one JSON object on stdout (logs stay on stderr).")
data_option = click.option("--data", "data_dir", required=True,
                           type=click.Path(exists=True, file_okay=False, path_type=Path),
                           help="Data folder with bars.parquet and news.jsonl.")
embeddings_option = click.option("--embeddings", required=True,
                                 type=click.Path(exists=True, dir_okay=False, path_type=Path),
                                 help="`nfc embed` output for the folder's news.")
out_option = click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
                          help="Run folder to write.")
force_option = click.option("--force", is_flag=True, help="Replace an existing output folder.")
leak_option = click.option("--allow-encoder-leak", is_flag=True,
                           help="Use embeddings whose encoder read news after the training end (validation or test "
                                "text) or has no record of its text; recorded in the run or report.")


def _parse_split(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[str, str] | None:
    """--split VAL_START,TEST_START -> two date strings (checked by WindowSpec)."""
    if value is None:
        return None
    parts = [part.strip() for part in value.split(",")]
    if len(parts) != 2 or not all(parts):
        raise click.BadParameter(f"{value!r} is not VAL_START,TEST_START (e.g. 2025-01-02,2025-07-01)")
    return parts[0], parts[1]


split_option = click.option("--split", callback=_parse_split, metavar="VAL_START,TEST_START",
                            help="Split by dates: anchors closing from VAL_START are validation, from TEST_START "
                                 "test (UTC unless an offset is given).  [default: 60/20/20 of the anchors]")


# how the live stores are read, shared by `nfc predict` (serving) and `nfc data export` (core), so a model is
# trained on exactly what the live job reads: table, column map, candle labels and length; news database,
# collection and field map; each with its NFC_* environment variable
_LIVE_SOURCE_OPTIONS = (
    click.option("--clickhouse-table", default="market.candles", show_default=True, envvar="NFC_CLICKHOUSE_TABLE"),
    click.option("--clickhouse-columns", default="", envvar="NFC_CLICKHOUSE_COLUMNS",
                 help="Column mapping, e.g. 'timestamp=candle_time,symbol=symbol'. Default: the seed's names."),
    click.option("--clickhouse-label", type=click.Choice(["open", "close"]), default="open", show_default=True,
                 envvar="NFC_CLICKHOUSE_LABEL", help="Whether a row's time is its candle's open or close time."),
    click.option("--clickhouse-candle", default="1min", show_default=True, envvar="NFC_CLICKHOUSE_CANDLE",
                 help="Length of one table row's candle."),
    click.option("--news-db", default="news", show_default=True, envvar="NFC_NEWS_DB"),
    click.option("--news-collection", default="news", show_default=True, envvar="NFC_NEWS_COLLECTION"),
    click.option("--news-fields", default="", envvar="NFC_NEWS_FIELDS",
                 help="Field mapping, e.g. 'published_at=releasedAt,body=content'. Default: the seed's names."),
)


def live_source_options(func: F) -> F:
    """The ClickHouse and MongoDB read options (clickhouse_table, clickhouse_columns, clickhouse_label,
    clickhouse_candle, news_db, news_collection, news_fields)."""
    for option in reversed(_LIVE_SOURCE_OPTIONS):
        func = option(func)
    return func
