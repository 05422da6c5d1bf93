"""`nfc`: one console command for the whole path data -> train -> export -> validate -> serve.

Subcommands that need an optional extra (torch, onnx, bentoml) are imported only when run, so
`nfc --help` and the data commands work with the core install alone; a missing extra fails with
one line naming the install command.
"""

from __future__ import annotations

import importlib
import logging
import os

import click

from neuralfusion.redact import install_log_redaction

# torch's OpenMP threads spin-wait by default; on a busy 2-core machine that stalled training steps for
# seconds (0.6-6.4 s vs 0.24-0.55 s per step). Must be set before torch is imported, which is lazy here.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__all__ = ["main"]

# a missing module of one of these is a bug of ours, not a missing extra
OWN_PACKAGES = ("neuralfusion", "training", "export", "serving", "nfc")

# name -> (module:attribute, extra that provides its imports, one-line help shown by `nfc --help`)
LAZY_COMMANDS: dict[str, tuple[str, str | None, str]] = {
    "synth": ("neuralfusion.cli:synth", None, "Write the synthetic market (bars, news, oracle)."),
    "data": ("neuralfusion.cli:data", None, "Inspect a data folder."),
    "embed": ("training.cli_encoder:embed", "train", "Embed news articles (cached)."),
    "encoder": ("training.cli_encoder:encoder", "train", "Build or fine-tune the news encoder."),
    "train": ("training.cli_train:train", "train", "Train the CGA model on a data folder."),
    "finetune": ("training.cli_train:finetune", "train", "Continue training; keep the incumbent unless beaten."),
    "backtest": ("training.cli_backtest:backtest", "train", "Walk-forward test with costs, baselines, ablations."),
    "export": ("export.cli:export_command", "export", "Export a run to an ONNX model package with parity."),
    "keygen": ("export.cli:keygen_command", "export", "Create an Ed25519 key pair for signing model packages."),
    "validate": ("export.cli:validate_command", "export", "Check a model package: hashes, parity, batch invariance."),
    "serve": ("nfc.serve:serve", "serve", "Serve predictions over HTTP and gRPC (BentoML), stored in MongoDB."),
    "predict": ("serving.predict_job:predict", "serve", "One run of the scheduled prediction job, stored in MongoDB."),
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
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if extra is None or (err.name or "").split(".")[0] in OWN_PACKAGES:
                raise
            raise click.ClickException(
                f"'nfc {cmd_name}' needs the '{extra}' extra (missing module {err.name!r}): "
                f"pip install 'neuralfusioncore[{extra}]'") from None
        return getattr(module, attribute)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """List commands from the table, so `nfc --help` imports no optional extra."""
        rows = [(name, help_text) for name, (_, _, help_text) in sorted(LAZY_COMMANDS.items())]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup)
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
def main(log_level: str) -> None:
    """NeuralFusionCore: news + OHLCV bars -> portfolio weights."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    install_log_redaction()  # passwords of $NFC_*_URI/URL and $NFC_API_KEY never reach a log line


if __name__ == "__main__":  # `python -m nfc.cli` / `torchrun -m nfc.cli train ...`
    main()
