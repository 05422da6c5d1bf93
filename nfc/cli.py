"""`nfc`: one console command for the whole path data -> train -> export -> validate -> serve.

Subcommands that need an optional extra (torch, onnx, bentoml) are imported only when run, so
`nfc --help` and the data commands work with the core install alone; a missing extra fails with
one line naming the install command.
"""

from __future__ import annotations

import importlib
import os

import click

from neuralfusion.cli_common import log_level_option, needs_extra, package_version
from neuralfusion.redact import install_log_redaction

# torch's OpenMP threads spin-wait by default; on a busy 2-core machine that stalled training steps for
# seconds (0.6-6.4 s vs 0.24-0.55 s per step). Must be set before torch is imported, which is lazy here.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__all__ = ["main"]

# name -> (module:attribute, extra that provides its imports, one-line help shown by `nfc --help`)
LAZY_COMMANDS: dict[str, tuple[str, str | None, str]] = {
    "synth": ("neuralfusion.cli:synth", None, "Write the synthetic market (bars, news, oracle)."),
    "data": ("neuralfusion.cli:data", None, "Inspect a data folder."),
    "embed": ("training.cli:embed", "train", "Embed news articles (cached)."),
    "encoder": ("training.cli:encoder", "train", "Build or fine-tune the news encoder."),
    "train": ("training.cli:train", "train", "Train the CGA model on a data folder."),
    "finetune": ("training.cli:finetune", "train", "Continue training; keep the incumbent unless beaten."),
    "backtest": ("nfc.backtest:backtest", "report", "Walk-forward test of a run or a package, as a report."),
    "export": ("export.cli:export_command", "export", "Export a run to an ONNX model package with parity."),
    "keygen": ("export.cli:keygen_command", "export", "Create an Ed25519 key pair for signing model packages."),
    "validate": ("export.cli:validate_command", "export", "Check a model package: hashes, parity, batch invariance."),
    "serve": ("nfc.serve:serve", "serve", "Serve predictions over HTTP and gRPC (BentoML), stored in MongoDB."),
    "predict": ("serving.cli:predict", "serve", "One run of the scheduled prediction job, stored in MongoDB."),
    "demo": ("nfc.demo:demo", "train", "Run the whole path on the embedded synthetic default."),
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use (click's documented lazy-loading pattern)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(LAZY_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in LAZY_COMMANDS:
            return None
        target, extra, _ = LAZY_COMMANDS[cmd_name]
        module_name, attribute = target.split(":")
        if extra is None:
            module = importlib.import_module(module_name)
        else:
            with needs_extra(extra, f"'nfc {cmd_name}'"):
                module = importlib.import_module(module_name)
        return getattr(module, attribute)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """List commands from the table, so `nfc --help` imports no optional extra."""
        rows = [(name, help_text) for name, (_, _, help_text) in sorted(LAZY_COMMANDS.items())]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup)
@click.version_option(package_version(), "--version", prog_name="nfc", message="%(prog)s %(version)s")
@log_level_option
def main() -> None:
    """NeuralFusionCore: news + OHLCV bars -> portfolio weights.

    Every command takes --log-level (before or after the command name) and --help; a command that ends in a
    result takes --json (one JSON object on stdout, logs on stderr). Exit codes: 0 done, 1 failed (the message
    says what to fix), 2 wrong usage.
    """
    install_log_redaction()  # passwords of $NFC_*_URI/URL and $NFC_API_KEY never reach a log line


if __name__ == "__main__":  # `python -m nfc.cli` / `torchrun -m nfc.cli train ...`
    main()
