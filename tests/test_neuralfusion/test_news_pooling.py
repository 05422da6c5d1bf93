"""News per asset: each asset's stream reads only the items that name it, items naming no asset form the market
channel, and the windows the model reads carry both."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from builders import START, STEP, make_bars

from neuralfusion.dataset import market_data
from neuralfusion.features import WARMUP_BARS, FeatureNormalizer
from neuralfusion.inputs import INPUT_NAMES, grid_inputs, pool_news
from neuralfusion.specs import BarSpec, Universe

A, B, C = 0, 1, 2


def _windows(item_bar, item_assets, vectors, n_bars=4):
    from neuralfusion.inputs import GridInputs

    news = pool_news(np.array(item_bar), np.array(item_assets, dtype=bool), np.array(vectors, np.float32), n_bars)
    market = np.zeros((n_bars, len(item_assets[0]), 7), np.float32)
    window = GridInputs(news=news, market=market).windows(np.array([n_bars - 1]), n_bars)
    return {name: values[0] for name, values in window.items()}


def test_an_item_naming_only_a_reaches_a_and_not_b_and_an_item_naming_none_the_market_channel():
    window = _windows(item_bar=[1, 2],
                      item_assets=[[True, False, False], [False, False, False]],
                      vectors=[[1.0, 2.0], [5.0, 7.0]])
    np.testing.assert_array_equal(window["news_emb"][1, A], [1.0, 2.0])
    np.testing.assert_array_equal(window["news_emb"][1, B], [0.0, 0.0])  # B reads [NO_NEWS]: zeros, coverage 0
    np.testing.assert_array_equal(window["coverage"], [[0, 0, 0], [1, 0, 0], [0, 0, 0], [0, 0, 0]])
    np.testing.assert_array_equal(window["market_news_mask"], [0, 0, 1, 0])
    np.testing.assert_array_equal(window["market_news_emb"][2], [5.0, 7.0])
    assert not window["news_emb"][2].any()  # the market item is in no asset's stream
    assert not window["market_news_emb"][1].any()  # the item naming A is not market news


def test_each_asset_reads_the_mean_of_its_own_items_and_a_two_name_item_counts_for_both():
    window = _windows(item_bar=[0, 0, 0, -1],
                      item_assets=[[True, False, False], [True, True, False], [False, False, True],
                                   [True, True, True]],
                      vectors=[[2.0, 0.0], [4.0, 4.0], [9.0, 9.0], [100.0, 100.0]])  # the last is off the grid
    np.testing.assert_array_equal(window["news_emb"][0], [[3.0, 2.0], [4.0, 4.0], [9.0, 9.0]])
    np.testing.assert_array_equal(window["coverage"][0], [1, 1, 1])
    assert not window["market_news_mask"].any() and not window["news_emb"][1:].any()
    assert {name: values.dtype for name, values in window.items()} == dict.fromkeys(INPUT_NAMES, np.float32)


@pytest.mark.parametrize(("item_bar", "message"), [([4], "outside"), ([-2], "outside"), ([0.5], "integers")])
def test_pool_news_refuses_items_off_the_grid_range(item_bar, message):
    with pytest.raises(ValueError, match=message):
        pool_news(np.array(item_bar), np.ones((1, 2), bool), np.ones((1, 3), np.float32), 4)


def test_grid_windows_pool_real_news_per_asset_and_keep_the_coverage_of_the_alignment():
    """On a market with items naming one, two or no symbols: coverage equals the alignment's one-hot, and each
    covered (bar, asset) holds the mean of exactly the items naming that asset at that bar."""
    symbols = ("AAA", "BBB", "CCC")
    bars = make_bars(symbols, n_bars=200)
    named = [["AAA"], ["BBB"], ["AAA", "BBB"], None, ["CCC"], ["AAA"]]
    news = pd.DataFrame({
        "id": [f"n{i}" for i in range(len(named))],
        "published_at": START + STEP * np.array([160.2, 160.4, 160.6, 160.8, 190.5, 160.9]),
        "title": [f"item {i}" for i in range(len(named))], "body": ["body"] * len(named),
        "symbols": [None if s is None else s for s in named],
    })
    news.loc[3, "title"] = "Markets drift"  # names no symbol in text either
    data = market_data(bars, news, Universe(symbols=symbols), BarSpec(interval="3min"))
    vectors = np.arange(len(news) * 4, dtype=np.float32).reshape(len(news), 4)
    grid = grid_inputs(data, vectors, FeatureNormalizer.fit(data.features, WARMUP_BARS, 150))
    anchor = np.array([data.n_bars - 1])
    window = grid.windows(anchor, 80)
    first = data.n_bars - 80
    np.testing.assert_array_equal(window["coverage"][0], data.aligned.coverage[first:])
    bar = int(data.aligned.bar[0]) - first  # items 0, 1, 2, 3, 5 share this bar
    assert (data.aligned.bar[[0, 1, 2, 3, 5]] == data.aligned.bar[0]).all()
    np.testing.assert_allclose(window["news_emb"][0, bar, 0], vectors[[0, 2, 5]].mean(axis=0))
    np.testing.assert_allclose(window["news_emb"][0, bar, 1], vectors[[1, 2]].mean(axis=0))
    np.testing.assert_array_equal(window["news_emb"][0, bar, 2], 0.0)
    np.testing.assert_array_equal(window["market_news_emb"][0, bar], vectors[3])
    assert window["market_news_mask"][0].sum() == 1
