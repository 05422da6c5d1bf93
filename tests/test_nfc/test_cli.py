"""The `nfc` command: help without extras, synth + data summary end to end, clear errors."""

from __future__ import annotations

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
