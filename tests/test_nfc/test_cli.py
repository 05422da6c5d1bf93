"""The `nfc` command: help without extras, synth + data summary end to end, exit codes, --version, --json,
--log-level anywhere, config files (JSON, TOML) whose errors name the file."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys

import pandas as pd
from builders import make_bars, make_news
from click.testing import CliRunner

from nfc.cli import LAZY_COMMANDS, main


def test_help_lists_every_command_without_importing_extras():
    code = ("import sys; from click.testing import CliRunner; from nfc.cli import main;"
            "r = CliRunner().invoke(main, ['--help']); assert r.exit_code == 0, r.output;"
            "print(r.output); assert 'torch' not in sys.modules")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for name in LAZY_COMMANDS:
        assert name in out


def test_every_command_has_help():
    runner = CliRunner()
    for name in LAZY_COMMANDS:
        result = runner.invoke(main, [name, "--help"])
        assert result.exit_code == 0, (name, result.output)
        assert "Usage:" in result.output


def test_synth_then_summary(tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["synth", "--out", str(tmp_path / "d"), "--seed", "3", "--assets", "4",
                                  "--days", "3"])
    assert result.exit_code == 0, result.output
    assert {p.name for p in (tmp_path / "d").iterdir()} == {"bars.parquet", "news.jsonl", "oracle.json",
                                                             "universe.json"}
    summary = runner.invoke(main, ["data", "summary", str(tmp_path / "d"), "--json"])
    assert summary.exit_code == 0, summary.output
    report = json.loads(summary.output)
    assert report["grid"]["bars"] == 3 * 480 and report["grid"]["assets"] == 4
    assert report["news"]["items"] == report["news"]["on_grid"] > 0
    assert all(row["stale_bars"] == 0 for row in report["assets"])
    table = runner.invoke(main, ["data", "summary", str(tmp_path / "d")])
    assert "stale%" in table.output and report["assets"][0]["symbol"] in table.output


def test_summary_of_a_bad_folder_is_one_clear_line(tmp_path):
    (tmp_path / "bars.csv").write_text("timestamp,symbol,open,high,low,close\n")
    result = CliRunner().invoke(main, ["data", "summary", str(tmp_path)])
    assert result.exit_code == 1
    assert "missing columns ['volume']" in result.output and "Traceback" not in result.output


def test_summary_counts_gaps(tmp_path):
    bars = make_bars(n_bars=200)
    gap = bars[(bars["symbol"] == "BBB")].index[50:53]
    bars.drop(index=gap).to_parquet(tmp_path / "bars.parquet")
    make_news(n_bars=200).to_parquet(tmp_path / "news.parquet")
    result = CliRunner().invoke(main, ["data", "summary", str(tmp_path), "--json"])
    rows = {r["symbol"]: r for r in json.loads(result.output)["assets"]}
    assert rows["BBB"]["stale_bars"] == 3 and rows["BBB"]["longest_gap_bars"] == 3
    assert rows["AAA"]["stale_bars"] == 0
    assert isinstance(pd.Timestamp(json.loads(result.output)["grid"]["start"]), pd.Timestamp)


# commands that end in a result: each takes --json (nfc serve runs until stopped and has none)
RESULT_COMMANDS = (["synth"], ["data", "summary"], ["data", "import"], ["data", "export"], ["embed"],
                   ["encoder", "init"], ["encoder", "train"], ["train"], ["finetune"], ["backtest"], ["export"],
                   ["keygen"], ["validate"], ["predict"], ["demo"])


def test_every_command_takes_log_level_and_every_result_command_json():
    runner = CliRunner()
    for path in [[name] for name in LAZY_COMMANDS] + [["data", "summary"], ["data", "import"], ["data", "export"],
                                                      ["encoder", "init"], ["encoder", "train"]]:
        result = runner.invoke(main, [*path, "--help"])
        assert result.exit_code == 0 and "--log-level" in result.output, (path, result.output)
        assert ("--json" in result.output) == (path in RESULT_COMMANDS), (path, result.output)


def test_version_is_the_installed_distributions():
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert result.output == f"nfc {importlib.metadata.version('neuralfusioncore')}\n"


def test_usage_errors_exit_2_and_failures_exit_1_naming_the_file(tmp_path):
    runner = CliRunner()
    missing_option = runner.invoke(main, ["synth"])
    assert missing_option.exit_code == 2 and "Missing option '--out'" in missing_option.output
    unknown_option = runner.invoke(main, ["data", "summary", str(tmp_path), "--colour"])
    assert unknown_option.exit_code == 2 and "No such option '--colour'" in unknown_option.output
    both = runner.invoke(main, ["backtest", "--model", str(tmp_path), "--package", str(tmp_path), "--data",
                                str(tmp_path), "--out", str(tmp_path / "r")])
    assert both.exit_code == 2 and "exactly one of --model RUN or --package PKG" in both.output
    (tmp_path / "bars.csv").write_text("timestamp,symbol,open,high,low,close\n")
    failure = runner.invoke(main, ["data", "summary", str(tmp_path)])
    assert failure.exit_code == 1 and isinstance(failure.exception, SystemExit)
    assert str(tmp_path / "bars.csv") in failure.stderr and failure.stdout == ""
    no_run = runner.invoke(main, ["--log-level", "WARNING", "backtest", "--model", str(tmp_path), "--data",
                                  str(tmp_path), "--embeddings", str(tmp_path / "bars.csv"), "--out",
                                  str(tmp_path / "r")])
    assert no_run.exit_code == 1 and f"{tmp_path} is not a finished run folder" in no_run.stderr
    assert not (tmp_path / "r").exists() and not (tmp_path / "r.partial").exists()


def test_json_prints_one_object_holding_the_result(tmp_path):
    result = CliRunner().invoke(main, ["synth", "--out", str(tmp_path / "d"), "--seed", "1", "--assets", "3",
                                       "--days", "2", "--json"])
    assert result.exit_code == 0, result.output
    written = json.loads(result.stdout)
    bars = pd.read_parquet(tmp_path / "d" / "bars.parquet")
    oracle = json.loads((tmp_path / "d" / "oracle.json").read_text())
    news = (tmp_path / "d" / "news.jsonl").read_text().splitlines()
    assert written == {"out": str(tmp_path / "d"), "preset": "default", "seed": 1, "assets": 3, "days": 2,
                       "calendar": "24/7",
                       "interval": "3min", "bar_rows": len(bars), "news_items": len(news),
                       "oracle_sharpe": oracle["sharpe"]}
    text = CliRunner().invoke(main, ["synth", "--out", str(tmp_path / "e"), "--seed", "1", "--assets", "3",
                                     "--days", "2"])
    assert text.stdout == (f"wrote {tmp_path / 'e'}: {len(bars)} bar rows, {len(news)} news items, "
                           f"oracle Sharpe {oracle['sharpe']:.2f}\n")


def write_news_file(path):
    """A data folder's news from a tiny synthetic market."""
    market = CliRunner().invoke(main, ["synth", "--out", str(path), "--assets", "3", "--days", "2"])
    assert market.exit_code == 0, market.output
    return path / "news.jsonl"


TINY_ENCODER_TOML = """# a tiny encoder, so the test runs in seconds
vocab_size = 400
num_hidden_layers = 1
hidden_size = 32
num_attention_heads = 2
intermediate_size = 64
max_position_embeddings = 512
block_size = 16
num_random_blocks = 2
"""


def test_bad_config_files_name_the_file_and_line(tmp_path):
    news = write_news_file(tmp_path / "data")
    cases = {"bad.json": ('{\n  "hidden_size": 32,\n}\n', "line 3 column 1: not valid JSON"),
             "bad.toml": ("hidden_size = 32\nlowercase = maybe\n", "not valid TOML"),
             "unknown.toml": ("hidden_sise = 32\n", "unknown keys ['hidden_sise']"),
             "wrong-type.json": ('{"hidden_size": "wide"}', "EncoderSetupConfig.hidden_size must be int"),
             "list.json": ("[1, 2]", "must hold a table of settings"),
             "settings.yaml": ("hidden_size: 32\n", "must end in .json or .toml")}
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        result = CliRunner().invoke(main, ["encoder", "init", "--news", str(news), "--out", str(tmp_path / "enc"),
                                           "--config", str(tmp_path / name)])
        assert result.exit_code == 1, (name, result.output)
        assert f"Error: {tmp_path / name}: " in result.stderr and message in result.stderr, (name, result.stderr)
    assert "line 2" in CliRunner().invoke(main, ["encoder", "init", "--news", str(news), "--out",
                                                 str(tmp_path / "enc"), "--config", str(tmp_path / "bad.toml")]).stderr
    bad_set = CliRunner().invoke(main, ["encoder", "init", "--news", str(news), "--out", str(tmp_path / "enc"),
                                        "--set", "hidden_sise=32"])
    assert bad_set.exit_code == 2 and "Invalid value for --set" in bad_set.stderr
    assert not (tmp_path / "enc").exists()


def test_toml_config_and_log_level_after_the_command(tmp_path):
    """A fresh `nfc` process: the TOML config sets the encoder, --set overrides it, and --log-level given after the
    command wins over the one before it, in either direction."""
    news = write_news_file(tmp_path / "data")
    (tmp_path / "encoder.toml").write_text(TINY_ENCODER_TOML)
    command = [sys.executable, "-m", "nfc.cli"]
    init = ["encoder", "init", "--news", str(news), "--config", str(tmp_path / "encoder.toml"), "--set", "seed=3"]
    loud = subprocess.run([*command, "--log-level", "ERROR", *init, "--out", str(tmp_path / "a"), "--json",
                           "--log-level", "INFO"], capture_output=True, text=True, timeout=240)
    assert loud.returncode == 0, loud.stderr[-3000:]
    result = json.loads(loud.stdout)
    assert result["config"]["hidden_size"] == 32 and result["config"]["num_hidden_layers"] == 1
    assert result["config"]["seed"] == 3 and result["out"] == str(tmp_path / "a")
    saved = json.loads((tmp_path / "a" / "config.json").read_text())
    assert (saved["hidden_size"], saved["num_hidden_layers"], saved["intermediate_size"]) == (32, 1, 64)
    assert " INFO training.cli: encoder setup: " in loud.stderr
    quiet = subprocess.run([*command, "--log-level", "INFO", *init, "--out", str(tmp_path / "b"), "--log-level",
                            "WARNING"], capture_output=True, text=True, timeout=240)
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    assert " INFO " not in quiet.stderr and quiet.stdout == ""
    assert json.loads((tmp_path / "b" / "config.json").read_text())["hidden_size"] == 32
