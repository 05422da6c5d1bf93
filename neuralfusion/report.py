"""The `nfc backtest` report folder: metrics.json, PNG plots and one self-contained report.html.

REPORT/
  metrics.json        per-strategy metrics, the Sharpe's standard error, 95% interval and probabilistic Sharpe
                      ratio (neuralfusion.stats), the oracle and the model/oracle Sharpe ratio, bars, costs, settings
  returns.csv         per-bar returns (after costs) of every strategy over the evaluated bars
  equity.png          compounded equity of every strategy over the evaluated bars
  drawdown.png        drawdown from the running peak of every strategy
  turnover.png        turnover sum|w_t - w_(t-1)| of every strategy at each bar it trades
  rolling_sharpe.png  annualised Sharpe over a trailing day of bars, the model against the others
  weights.png         the model's weights, assets x rebalance time
  report.html         the table, the settings and the plots inlined as data: URIs (opens offline, mails whole)
Like a run folder it is written into `REPORT.partial/` and renamed only when complete.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from neuralfusion.artifacts import write_json
from neuralfusion.backtest import METRIC_KEYS, Backtest
from neuralfusion.portfolio import annualised_sharpe, compounded_pnl

__all__ = ["PLOTS", "REPORT_FILES", "render_html", "rolling_sharpe", "write_report"]

PLOTS = {"equity.png": "Equity (compounded, after costs)",
         "drawdown.png": "Drawdown from the running peak",
         "turnover.png": "Turnover at each rebalance",
         "rolling_sharpe.png": "Rolling annualised Sharpe",
         "weights.png": "Model weights at each rebalance"}
REPORT_FILES = ("metrics.json", "returns.csv", "report.html", *PLOTS)
# the rolling Sharpe's shortest window: a month of daily bars
MIN_ROLLING_BARS = 20
METRIC_FORMATS = {"sharpe": "{:.2f}", "cumulative_return": "{:+.2%}", "annual_return": "{:+.2%}",
                  "max_drawdown": "{:.2%}",
                  "annual_turnover": "{:,.0f}", "hit_rate": "{:.1%}", "gross_exposure": "{:.2f}",
                  "net_exposure": "{:+.2f}", "bars": "{:d}"}


def rolling_sharpe(returns: np.ndarray, window: int, bars_per_year: float) -> np.ndarray:
    """annualised_sharpe over each trailing `window` bars (NaN until the first full window)."""
    return pd.Series(returns).rolling(window).apply(annualised_sharpe, raw=True, args=(bars_per_year,)).to_numpy()


def rolling_window(backtest: Backtest) -> int:
    """One trading day of bars and at least a month of daily bars (20), shortened to a quarter of the evaluated
    bars so a short test still draws a curve."""
    per_day = round(pd.Timedelta("1D") / pd.Timedelta(backtest.settings["interval"]))
    return max(2, min(max(per_day, MIN_ROLLING_BARS), len(backtest.model.result.returns) // 4))


def bar_times(backtest: Backtest, first: int, count: int) -> np.ndarray:
    """Bar close times as naive UTC datetime64, which matplotlib plots without a converter."""
    return backtest.times[first:first + count].tz_convert("UTC").tz_localize(None).to_numpy()


def new_axes(title: str, ylabel: str) -> tuple[Figure, Any]:
    figure = Figure(figsize=(11, 4.5), layout="constrained")
    FigureCanvasAgg(figure)  # Agg, whatever backend pyplot would pick: no display is ever needed
    axes = figure.add_subplot()
    axes.set_title(title)
    axes.set_xlabel("bar close time (UTC)")
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)
    return figure, axes


def plot_equity(backtest: Backtest, path: Path) -> None:
    figure, axes = new_axes(PLOTS["equity.png"], "equity (start = 1)")
    for strategy in backtest.strategies.values():
        walk = strategy.result
        axes.plot(bar_times(backtest, walk.first_bar, len(walk.returns)), compounded_pnl(walk.returns),
                  label=strategy.label, linewidth=2.0 if strategy.kind == "model" else 1.0)
    if backtest.oracle is not None:  # only its recorded end point is known
        walk = backtest.model.result
        bars = "same bars" if backtest.oracle["same_bars"] else "other bars"
        axes.scatter(bar_times(backtest, walk.first_bar + len(walk.returns) - 1, 1),
                     [1.0 + backtest.oracle["cumulative_return"]], marker="*", s=120, color="black",
                     label=f"oracle, recorded end ({bars})", zorder=3)
    axes.legend(loc="upper left", fontsize="small")
    figure.savefig(path, dpi=100)


def plot_drawdown(backtest: Backtest, path: Path) -> None:
    figure, axes = new_axes(PLOTS["drawdown.png"], "drawdown")
    for strategy in backtest.strategies.values():
        walk = strategy.result
        equity = compounded_pnl(walk.returns)
        axes.plot(bar_times(backtest, walk.first_bar, len(walk.returns)), equity / np.maximum.accumulate(equity) - 1,
                  label=strategy.label, linewidth=2.0 if strategy.kind == "model" else 1.0)
    axes.legend(loc="lower left", fontsize="small")
    figure.savefig(path, dpi=100)


def plot_turnover(backtest: Backtest, path: Path) -> None:
    figure, axes = new_axes(PLOTS["turnover.png"], "turnover (sum |dw|)")
    for strategy in backtest.strategies.values():
        walk = strategy.result
        traded = walk.turnover > 0
        axes.plot(bar_times(backtest, walk.first_bar, len(walk.returns))[traded], walk.turnover[traded], marker=".",
                  label=strategy.label, linewidth=2.0 if strategy.kind == "model" else 1.0)
    axes.legend(loc="upper left", fontsize="small")
    figure.savefig(path, dpi=100)


def plot_rolling_sharpe(backtest: Backtest, path: Path, window: int) -> None:
    figure, axes = new_axes(f"{PLOTS['rolling_sharpe.png']} ({window} bars)", "annualised Sharpe")
    for strategy in backtest.strategies.values():
        walk = strategy.result
        axes.plot(bar_times(backtest, walk.first_bar, len(walk.returns)),
                  rolling_sharpe(walk.returns, window, backtest.bars_per_year), label=strategy.label,
                  linewidth=2.0 if strategy.kind == "model" else 1.0)
    axes.axhline(0.0, color="grey", linewidth=0.8)
    axes.legend(loc="upper left", fontsize="small")
    figure.savefig(path, dpi=100)


def plot_weights(backtest: Backtest, path: Path) -> None:
    figure, axes = new_axes(PLOTS["weights.png"], "asset")
    weights = backtest.model.anchor_weights  # (R, N)
    every = backtest.settings["rebalance_every"]
    edges = np.append(backtest.anchors, backtest.anchors[-1] + every)  # each row is held until the next anchor
    limit = max(float(np.abs(weights).max()), 1e-12)
    mesh = axes.pcolormesh(bar_times(backtest, 0, len(backtest.times))[edges], np.arange(len(backtest.symbols) + 1),
                           weights.T, cmap="RdBu", vmin=-limit, vmax=limit)
    axes.set_yticks(np.arange(len(backtest.symbols)) + 0.5, labels=list(backtest.symbols))
    axes.invert_yaxis()  # universe order, top down
    axes.grid(False)
    figure.colorbar(mesh, ax=axes, label="weight (long > 0 > short)")
    figure.savefig(path, dpi=100)


def table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def metric_cells(values: dict[str, Any]) -> list[str]:
    """Formatted metrics in table order; a key an older oracle.json does not record shows as n/a."""
    return [METRIC_FORMATS[key].format(values[key]) if key in values else "n/a" for key in METRIC_KEYS]


def render_html(metrics: dict[str, Any], images: dict[str, bytes]) -> str:
    """One HTML page with no external assets: styles inline, PNGs as base64 data: URIs."""
    rows = [[name, s["label"], s["kind"], *metric_cells(s)] for name, s in metrics["strategies"].items()]
    oracle = metrics["oracle"]
    if oracle is not None:
        rows.append(["oracle", "planted-signal oracle (recorded)", "ceiling", *metric_cells(oracle)])
    ev, costs, settings = metrics["evaluation"], metrics["costs"], metrics["settings"]
    summary = (f"Test split bars {ev['first_return_bar']}..{ev['last_return_bar']} ({ev['start']} to {ev['end']}): "
               f"{ev['rebalances']} rebalances every {settings['rebalance_every']} bars, {costs['cost_bps']} bps "
               f"on turnover, annualised with {settings['bars_per_year']:,.0f} bars a year ({settings['calendar']}).")
    if oracle is None:
        oracle_note = "No oracle.json in the data folder: no known ceiling."
    else:
        ratio = metrics["model_to_oracle_sharpe"]
        ratio_text = "undefined (oracle Sharpe 0)" if ratio is None else f"{ratio:.2f}"
        same = "the same bars as" if oracle["same_bars"] else "other bars than"
        oracle_note = (f"Model Sharpe / oracle Sharpe: {ratio_text}. The oracle was scored on bars "
                       f"{oracle['first_return_bar']}..{oracle['last_return_bar']}, {same} this backtest, "
                       f"rebalancing every {oracle['rebalance_every']} bars at {oracle['cost_bps']} bps.")
    statistics = metrics["statistics"]
    stat_rows = [[name, f"{s['sharpe_se']:.2f}", f"[{s['sharpe_ci95'][0]:.2f}, {s['sharpe_ci95'][1]:.2f}]",
                  f"{s['psr_vs_zero']:.1%}",
                  "-" if s["psr_vs_equal_weight"] is None else f"{s['psr_vs_equal_weight']:.1%}"]
                 for name, s in statistics.items()]
    words = "".join(f"<li>{html.escape(s['words'])}</li>" for s in statistics.values())
    honesty = (f"{ev['bars']} bars and {ev['independent_rebalances']} independent rebalances (one per holding period "
               "or forecast horizon, whichever is longer). Standard errors after Lo (2002) for i.i.d. returns; the "
               "probabilistic Sharpe ratio (Bailey and Lopez de Prado 2012) is the probability that the true Sharpe "
               "exceeds 0, or equal weight's over the same bars.")
    figures = "".join(
        f"<h2>{html.escape(title)}</h2><img alt=\"{html.escape(title)}\" "
        f"src=\"data:image/png;base64,{base64.b64encode(images[name]).decode('ascii')}\">"
        for name, title in PLOTS.items())
    settings_rows = [[key, str(value)] for key, value in sorted(settings.items())]
    text_check = settings.get("encoder_text") or {}
    leak_note = "" if text_check.get("status", "clean") == "clean" else (
        f"<p><strong>Encoder leak allowed (--allow-encoder-leak):</strong> {html.escape(_leak_text(text_check))}</p>")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Backtest of {html.escape(settings['model_run'])}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1200px}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}td:first-child,th:first-child{{text-align:left}}
img{{max-width:100%}}</style></head>
<body><h1>Backtest of {html.escape(settings['model_run'])}</h1>
<p>{html.escape(summary)}</p>{leak_note}
<h2>Metrics</h2>{table(['strategy', 'label', 'kind', *METRIC_KEYS], rows)}
<h2>How much to trust the Sharpe ratios</h2><p>{html.escape(honesty)}</p><ul>{words}</ul>
{table(['strategy', 'Sharpe s.e.', '95% interval', 'P(SR > 0)', 'P(SR > equal weight)'], stat_rows)}
<p>{html.escape(oracle_note)}</p><p>Costs: {html.escape(costs['rule'])}.</p>
{figures}
<h2>Settings</h2>{table(['setting', 'value'], settings_rows)}
</body></html>
"""


def _leak_text(check: dict[str, Any]) -> str:
    """Why the embeddings' encoder is not clean, in words (neuralfusion/encoder_text.py)."""
    if check["status"] == "unrecorded":
        return "the news encoder has no record of the text it was trained on; it may have read test-period news."
    return (f"the news encoder was trained on news published {check['text_start']} .. {check['text_end']}, after "
            f"the training end {check['training_end']}: it read validation or test text, so these numbers are "
            "optimistic.")


def write_report(backtest: Backtest, folder: Path) -> dict[str, Any]:
    """Write metrics.json, the plots and report.html into `folder`; returns the metrics written."""
    window = rolling_window(backtest)
    plot_equity(backtest, folder / "equity.png")
    plot_drawdown(backtest, folder / "drawdown.png")
    plot_turnover(backtest, folder / "turnover.png")
    backtest.returns_frame().to_csv(folder / "returns.csv", index=False, float_format="%.17g")
    plot_rolling_sharpe(backtest, folder / "rolling_sharpe.png", window)
    plot_weights(backtest, folder / "weights.png")
    metrics = {**backtest.metrics(), "report": {"plots": list(PLOTS), "rolling_sharpe_bars": window}}
    write_json(folder / "metrics.json", metrics)
    images = {name: (folder / name).read_bytes() for name in PLOTS}
    (folder / "report.html").write_text(render_html(metrics, images), encoding="utf-8")
    return metrics
