"""The CGA model (training/model.py) and its config (neuralfusion/model_config.py) on a tiny config."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from neuralfusion import portfolio
from neuralfusion.features import FEATURE_NAMES
from neuralfusion.model_config import CgaConfig, dominant_periods
from training.loss import cga_loss, sharpe_loss
from training.model import (
    CgaInception,
    CgaModel,
    CgaOutput,
    cga_example_inputs,
    surrogate_weights,
    topk_weights,
)

N_ASSETS = 5
HORIZON = 6


def tiny_config(**overrides) -> CgaConfig:
    # period 5 does not divide the lookback of 24, so the padding path is exercised
    values = dict(
        n_assets=N_ASSETS,
        embed_dim=16,
        lookback=24,
        d_model=16,
        n_heads=2,
        periods=(12, 5),
        conv_kernels=(1, 3),
        top_k=2,
        dropout=0.0,
    )
    return CgaConfig(**{**values, **overrides})


def tiny_model(**overrides) -> CgaModel:
    torch.manual_seed(0)
    return CgaModel(tiny_config(**overrides)).eval()


def logits_of(model: CgaModel, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(*inputs).logits


def targets_for(batch: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, HORIZON, N_ASSETS, generator=torch.Generator().manual_seed(seed)) * 0.01


# ---- forward and loss -----------------------------------------------------------------------------


def test_forward_returns_per_asset_logits_and_weights():
    model = tiny_model()
    out = model(*cga_example_inputs(model.config, 3))
    assert out.logits.shape == (3, N_ASSETS)
    assert out.weights.shape == (3, N_ASSETS)
    assert out.loss is None and out.loss_terms is None


def test_forward_computes_the_loss_only_with_targets():
    model = tiny_model()
    out = model(*cga_example_inputs(model.config, 3), targets=targets_for(3))
    assert out.loss.shape == ()
    assert set(out.loss_terms) == {"sharpe", "diversification", "net_exposure", "turnover", "tilt"}


def configured_loss(config: CgaConfig, weights, targets, prev=None) -> torch.Tensor:
    """cga_loss with the config's weights, the fused model's objective without the stream terms."""
    loss, _ = cga_loss(
        weights,
        targets,
        prev,
        lambda_div=config.lambda_div,
        lambda_net=config.lambda_net,
        lambda_turnover=config.lambda_turnover,
        lambda_tilt=config.lambda_tilt,
        sharpe_eps=config.sharpe_eps,
    )
    return loss


def test_eval_loss_is_taken_on_the_exact_topk_weights():
    model = tiny_model()
    targets, prev = targets_for(4), torch.full((4, N_ASSETS), 0.2)
    out = model(*cga_example_inputs(model.config, 4), targets=targets, prev_weights=prev)
    torch.testing.assert_close(out.loss, configured_loss(model.config, out.weights, targets, prev))


def test_training_loss_is_taken_on_the_surrogate_weights():
    model = tiny_model(surrogate_mix=0.3, lambda_streams=0.0).train()
    targets = targets_for(4)
    out = model(*cga_example_inputs(model.config, 4), targets=targets)
    c = model.config
    torch.testing.assert_close(out.loss, configured_loss(c, surrogate_weights(out.logits, c.top_k, 0.3), targets))
    torch.testing.assert_close(out.weights, topk_weights(out.logits, c.top_k))


def test_forward_rejects_a_window_of_the_wrong_length():
    model = tiny_model()
    *news, market = cga_example_inputs(model.config, 2)
    with pytest.raises(ValueError, match=r"market must have shape \(B, 24, 5, 7\), got \(2, 23, 5, 7\)"):
        model(*news, market[:, 1:])


def test_forward_rejects_news_pooled_per_bar_instead_of_per_asset():
    model = tiny_model()
    news_emb, *rest = cga_example_inputs(model.config, 2)
    with pytest.raises(ValueError, match=r"news_emb must have shape \(B, 24, 5, 16\), got \(2, 24, 16\)"):
        model(news_emb.mean(dim=2), *rest)


def test_each_sample_gives_the_same_logits_alone_as_among_64_others():
    model = tiny_model()
    inputs = cga_example_inputs(model.config, 65, seed=3)
    together = logits_of(model, inputs)
    for i in (0, 31, 64):
        alone = logits_of(model, [x[i : i + 1] for x in inputs])
        torch.testing.assert_close(alone[0], together[i], atol=1e-5, rtol=0)


@pytest.mark.parametrize("fusion", ["cga", "concat"])
def test_logits_change_when_only_the_news_changes(fusion):
    model = tiny_model(fusion=fusion, centre_logits=False)  # each asset's own score (centring mixes them)
    news_emb, coverage, market_emb, market_mask, market = cga_example_inputs(model.config, 4)
    before = logits_of(model, (news_emb, coverage, market_emb, market_mask, market))
    # the market channel reaches every asset
    changed = market_emb + market_mask.unsqueeze(-1)  # move the embedding only where there is news
    after = logits_of(model, (news_emb, coverage, changed, market_mask, market))
    assert (before - after).abs().min() > 1e-6  # every sample, every asset
    # an asset's own news reaches that asset, and only that asset
    changed = news_emb + coverage.unsqueeze(-1)
    after = logits_of(model, (changed, coverage, market_emb, market_mask, market))
    named = coverage.amax(dim=1) > 0  # (B, N): the asset is named somewhere in the window
    assert named.any() and not named.all()
    assert (before - after).abs()[named].min() > 1e-6
    assert torch.equal(before[~named], after[~named])


@pytest.mark.parametrize("fusion", ["cga", "concat"])
def test_logits_change_when_only_the_market_changes(fusion):
    # lambda_market_head 0: the default (1) starts the head's market weights at 0, so at initialisation concat's
    # logits read no bars (that start is tested in test_lambda_market_head_starts_the_model_as_its_news_side...)
    model = tiny_model(fusion=fusion, lambda_market_head=0.0)
    *news, market = cga_example_inputs(model.config, 4)
    before = logits_of(model, (*news, market))
    after = logits_of(model, (*news, market + 0.5))
    assert (before - after).abs().min() > 1e-6


def test_an_assets_own_news_moves_its_logit_and_not_the_other_assets():
    """News naming only asset 0 changes asset 0's logit; the others' logits move only through the count of named
    assets in the market channel, which a second name at the same bar leaves unchanged."""
    model = tiny_model(streams="news", centre_logits=False)  # each asset's own score (centring mixes them)
    news_emb, coverage, market_emb, market_mask, market = cga_example_inputs(model.config, 4)
    coverage[:, 5, :2] = 1.0  # assets 0 and 1 are named at bar 5 in every sample
    news_emb[:, 5, :2] = torch.randn(4, 2, model.config.embed_dim)
    other = news_emb.clone()
    other[:, 5, 0] = torch.randn(4, model.config.embed_dim)  # other news about asset 0 only
    before = logits_of(model, (news_emb, coverage, market_emb, market_mask, market))
    after = logits_of(model, (other, coverage, market_emb, market_mask, market))
    assert (before[:, 0] - after[:, 0]).abs().min() > 1e-6
    torch.testing.assert_close(before[:, 1:], after[:, 1:], atol=0, rtol=0)


@pytest.mark.parametrize("streams", ["both", "news", "market"])
def test_centred_logits_are_each_assets_score_less_the_window_mean(streams):
    """Centring removes what every asset of a window shares, so a common score never becomes a net bet on the whole
    universe: the logits sum to 0 per window and equal the uncentred model's (same weights) less their mean."""
    centred = tiny_model(streams=streams)
    plain = tiny_model(streams=streams, centre_logits=False)
    plain.load_state_dict(centred.state_dict())
    inputs = cga_example_inputs(centred.config, 6, seed=2)
    out, raw = logits_of(centred, inputs), logits_of(plain, inputs)
    assert centred.config.centre_logits and raw.sum(dim=-1).abs().min() > 1e-4
    torch.testing.assert_close(out.sum(dim=-1), torch.zeros(6), atol=1e-6, rtol=0)
    torch.testing.assert_close(out, raw - raw.mean(dim=-1, keepdim=True), atol=1e-6, rtol=0)
    with torch.no_grad():
        centred.head.out.bias += 3.0  # a score every asset shares: the book does not move
        plain.head.out.bias += 3.0
    unshifted = tiny_model(streams=streams)(*inputs).weights
    torch.testing.assert_close(centred(*inputs).weights, unshifted, atol=1e-4, rtol=0)
    assert not torch.allclose(plain(*inputs).weights, tiny_model(streams=streams, centre_logits=False)(*inputs).weights)


def test_a_config_written_before_centring_keeps_uncentred_logits():
    old = {k: v for k, v in tiny_config().to_dict().items() if k != "centre_logits"}
    assert tiny_config().centre_logits and not CgaConfig.from_dict(old).centre_logits
    assert CgaConfig.from_dict(tiny_config().to_dict()) == tiny_config()


def test_a_config_written_before_news_rank_and_lambda_market_head_keeps_them_off():
    """Runs trained before those settings read the whole embedding (the weights' shapes say so) and had no market
    head penalty; the defaults (1 and 1.0) must not change how such a run loads or finetunes."""
    settings = ("news_rank", "lambda_market_head")
    old = {k: v for k, v in tiny_config().to_dict().items() if k not in settings}
    assert (tiny_config().news_rank, tiny_config().lambda_market_head) == (1, 1.0)
    assert (CgaConfig.from_dict(old).news_rank, CgaConfig.from_dict(old).lambda_market_head) == (0, 0.0)
    model = CgaModel(CgaConfig.from_dict(old))
    assert isinstance(model.news.reduce, torch.nn.Identity)  # the old shapes: no projection to load into


def test_concat_fusion_has_no_cross_attention():
    model = tiny_model(fusion="concat")
    assert not any(isinstance(m, torch.nn.MultiheadAttention) for m in model.modules())


def test_market_only_ablation_ignores_the_news():
    model = tiny_model(streams="market")
    news_emb, coverage, market_emb, market_mask, market = cga_example_inputs(model.config, 4)
    before = logits_of(model, (news_emb, coverage, market_emb, market_mask, market))
    after = logits_of(model, (torch.randn_like(news_emb), coverage.roll(1, dims=-1), torch.randn_like(market_emb),
                              1 - market_mask, market))
    assert model.news is None
    assert torch.equal(before, after)


def test_news_only_ablation_ignores_the_market():
    model = tiny_model(streams="news")
    *news, market = cga_example_inputs(model.config, 4)
    before = logits_of(model, (*news, market))
    after = logits_of(model, (*news, torch.randn_like(market)))
    assert model.market is None
    assert torch.equal(before, after)


def test_embeddings_at_bars_without_news_never_reach_the_output():
    model = tiny_model()
    news_emb, coverage, market_emb, market_mask, market = cga_example_inputs(model.config, 4)
    junk = news_emb + (1 - coverage).unsqueeze(-1) * torch.randn_like(news_emb) * 100
    market_junk = market_emb + (1 - market_mask).unsqueeze(-1) * torch.randn_like(market_emb) * 100
    assert torch.equal(
        logits_of(model, (news_emb, coverage, market_emb, market_mask, market)),
        logits_of(model, (junk, coverage, market_junk, market_mask, market)),
    )


@pytest.mark.parametrize("vector", ["no_news", "no_market_news"])
def test_no_news_vectors_are_what_bars_without_news_see(vector):
    model = tiny_model()
    inputs = cga_example_inputs(model.config, 4)
    before = logits_of(model, inputs)
    with torch.no_grad():
        getattr(model.news, vector).add_(1.0)
    assert (before - logits_of(model, inputs)).abs().max() > 1e-4


def test_news_rank_reads_the_embeddings_only_along_its_learned_directions():
    """With news_rank r, moving every embedding (the asset's own and the market-wide) orthogonally to the r learned
    directions leaves the logits as they were; moving it along one of them does not."""
    model = tiny_model(news_rank=2)
    news_emb, coverage, market_emb, market_mask, market = cga_example_inputs(model.config, 4)
    directions = model.news.reduce.weight.detach()  # (r, D)
    assert directions.shape == (2, model.config.embed_dim)
    noise = torch.randn(model.config.embed_dim)
    orthogonal = noise - torch.linalg.lstsq(directions.T, noise).solution @ directions  # noise less its projection
    before = logits_of(model, (news_emb, coverage, market_emb, market_mask, market))
    moved = logits_of(model, (news_emb + orthogonal, coverage, market_emb + orthogonal, market_mask, market))
    torch.testing.assert_close(moved, before, atol=1e-5, rtol=0)
    along = logits_of(model, (news_emb + directions[0], coverage, market_emb, market_mask, market))
    assert (along - before).abs().max() > 1e-4


def market_sequence_spectrum(model: CgaModel) -> torch.Tensor:
    """Singular values of the market stream's output (less the output map's bias, if any) over all bars and assets."""
    *_, market = cga_example_inputs(model.config, 4)
    with torch.no_grad():
        embedded = model.market.asset_inputs(market)  # (B, L, N, C_market)
        sequence = model.market(embedded.permute(0, 2, 1, 3).reshape(-1, *embedded.shape[1:2], embedded.shape[-1]))
        bias = getattr(model.market.out, "bias", torch.zeros(model.config.d_model))
        return torch.linalg.svdvals((sequence - bias).reshape(-1, model.config.d_model))


def test_a_narrow_market_stream_spans_only_its_channels():
    """market_channels=3: the market sequence handed to the fusion has d_model channels, one linear map of 3, so over
    all bars and assets it spans at most 3 directions; the default stream's 16 channels span more."""
    narrow, default = tiny_model(market_channels=3), tiny_model()
    singular = market_sequence_spectrum(narrow)
    assert singular.shape == (narrow.config.d_model,)
    assert singular[1] > 1e-3 * singular[0] and singular[3] < 1e-4 * singular[0]
    wide = market_sequence_spectrum(default)
    assert wide[3] > 1e-2 * wide[0]
    assert sum(p.numel() for p in narrow.market.parameters()) < sum(p.numel() for p in default.market.parameters())


@pytest.mark.parametrize("setting", ["news_rank", "market_channels"])
def test_config_rejects_a_negative_stream_width(setting):
    with pytest.raises(ValueError, match=f"{setting} must be >= 0"):
        tiny_config(**{setting: -1})


@pytest.mark.parametrize("overrides", [{}, {"news_rank": 2, "market_channels": 4},
                                       {"news_rank": 0, "lambda_market_head": 0.0}])
def test_every_parameter_gets_a_gradient(overrides):
    """With lambda_market_head > 0 (the default) the head's market weights start at 0, so the first step's gradient
    cannot reach the market side's cross gate (it only feeds those weights); from the second step on it does."""
    model = tiny_model(**overrides).train()
    inputs, targets, prev = cga_example_inputs(model.config, 8), targets_for(8), torch.zeros(8, N_ASSETS)
    if model.config.lambda_market_head > 0:
        model(*inputs, targets=targets, prev_weights=prev).loss.backward()
        torch.optim.SGD(model.parameters(), lr=0.1).step()
        model.zero_grad(set_to_none=True)
    out = model(*inputs, targets=targets, prev_weights=prev)
    out.loss.backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead


# ---- TimesNet pieces --------------------------------------------------------------------------------


def test_merged_inception_equals_the_mean_of_parallel_convs():
    torch.manual_seed(0)
    block = CgaInception(3, 4, (1, 3, 5))
    for b in block.biases:
        torch.nn.init.normal_(b)
    x = torch.randn(2, 3, 6, 7)
    parallel = [
        F.conv2d(x, w, b, padding=k // 2) for w, b, k in zip(block.weights, block.biases, (1, 3, 5), strict=True)
    ]
    torch.testing.assert_close(block(x), torch.stack(parallel).mean(0), atol=1e-5, rtol=1e-5)


def test_dominant_periods_find_the_planted_period_in_a_series():
    rng = np.random.default_rng(0)
    t = np.arange(80 * 30)
    series = np.sin(2 * np.pi * t / 16)[:, None, None] + 0.3 * rng.standard_normal((t.size, 3, 7))  # (T, N, F)
    assert dominant_periods(series, k=2, lookback=80)[0] == 16


def test_dominant_periods_find_the_planted_period_in_windows():
    rng = np.random.default_rng(1)
    t = np.arange(80)[None, :] + rng.integers(0, 100, size=(12, 1))  # random phases
    windows = np.sin(2 * np.pi * t / 20)[:, :, None, None] + 0.3 * rng.standard_normal((12, 80, 2, 7))
    periods = dominant_periods(windows, k=3, lookback=80)
    assert periods[0] == 20
    assert len(set(periods)) == 3


def test_dominant_periods_refuse_nan():
    with pytest.raises(ValueError, match="NaN"):
        dominant_periods(np.full((160, 2, 7), np.nan), k=2, lookback=80)


# ---- top-k weights ---------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 3, 6, 9])
def test_topk_weights_match_the_numpy_rule_on_random_logits(k):
    logits = torch.randn(200, 6, generator=torch.Generator().manual_seed(k))
    expected = portfolio.topk_weights(logits.numpy(), k)
    np.testing.assert_allclose(topk_weights(logits, k).numpy(), expected, atol=1e-6)


def test_topk_weights_break_ties_by_the_lower_asset_index():
    logits = torch.tensor([[1.0, -2.0, 2.0, 1.0, -1.0], [3.0, 3.0, 3.0, 3.0, 3.0]])
    weights = topk_weights(logits, 3)
    np.testing.assert_allclose(weights.numpy(), portfolio.topk_weights(logits.numpy(), 3), atol=1e-7)
    np.testing.assert_allclose(weights[0].numpy(), [0.2, -0.4, 0.4, 0.0, 0.0], atol=1e-7)
    np.testing.assert_allclose(weights[1].numpy(), [1 / 3, 1 / 3, 1 / 3, 0.0, 0.0], atol=1e-7)


def test_topk_weights_use_every_asset_when_k_reaches_n():
    logits = torch.tensor([[0.5, -1.5, 2.0]])
    np.testing.assert_allclose(topk_weights(logits, 7).numpy(), [[0.125, -0.375, 0.5]], atol=1e-7)


def test_topk_weights_are_flat_for_all_zero_logits():
    logits = torch.zeros(2, 4, requires_grad=True)
    weights = topk_weights(logits, 2)
    weights.sum().backward()
    assert torch.equal(weights, torch.zeros(2, 4))
    assert torch.isfinite(logits.grad).all()


def test_topk_weights_keep_logit_signs_with_gross_one():
    logits = torch.randn(50, 8, generator=torch.Generator().manual_seed(0))
    weights = topk_weights(logits, 4)
    kept = weights != 0
    assert torch.equal(torch.sign(weights[kept]), torch.sign(logits[kept]))
    assert torch.equal(kept.sum(-1), torch.full((50,), 4))
    torch.testing.assert_close(weights.abs().sum(-1), torch.ones(50))


def test_topk_weights_send_gradient_only_to_kept_logits():
    logits = torch.tensor([[0.1, -3.0, 2.0, 0.2]], requires_grad=True)
    (topk_weights(logits, 2) * torch.tensor([1.0, 2.0, 3.0, 4.0])).sum().backward()
    assert logits.grad[0, [0, 3]].eq(0).all()
    assert logits.grad[0, [1, 2]].ne(0).all()


def test_surrogate_weights_keep_gross_one_and_reach_every_logit():
    logits = torch.tensor([[0.1, -3.0, 2.0, 0.2]], requires_grad=True)
    weights = surrogate_weights(logits, 2, mix=0.2)
    (weights * torch.tensor([1.0, 2.0, 3.0, 4.0])).sum().backward()
    torch.testing.assert_close(weights.abs().sum(), torch.tensor(1.0))
    assert logits.grad.ne(0).all()


# ---- config ----------------------------------------------------------------------------------------


def test_config_survives_a_json_round_trip():
    config = tiny_config(fusion="concat", streams="market")
    assert CgaConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_config_default_feature_count_matches_the_feature_set():
    assert CgaConfig(n_assets=3).n_features == len(FEATURE_NAMES)


def test_config_rejects_periods_longer_than_the_lookback():
    with pytest.raises(ValueError, match=r"periods must lie in \[2, lookback=24\], got \[12, 30\]"):
        tiny_config(periods=(12, 30))


def test_config_rejects_heads_that_do_not_divide_the_width():
    with pytest.raises(ValueError, match="d_model=16 must be divisible by n_heads=3"):
        tiny_config(n_heads=3)


def test_config_rejects_unknown_keys():
    with pytest.raises(ValueError, match=r"unknown keys \['d_modle'\]"):
        CgaConfig.from_dict({"n_assets": 3, "d_modle": 32})


def test_a_config_from_before_per_asset_news_is_refused_naming_the_layout(tmp_path):
    """A run or checkpoint whose config has no news_layout read bar-pooled news: refused, saying so, not loaded into
    a model whose news stream it does not fit."""
    old = {k: v for k, v in tiny_config().to_dict().items() if k != "news_layout"}
    with pytest.raises(ValueError, match=r"before per-asset news .*news_emb \(B, L, D\).*retrain the run"):
        CgaConfig.from_dict(old)
    path = tmp_path / "old.safetensors"
    model = tiny_model()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path),
              metadata={"cga_config": json.dumps(old)})
    with pytest.raises(ValueError, match="before per-asset news"):
        CgaModel.from_checkpoint(path)


# ---- optimiser and checkpoints ---------------------------------------------------------------------


def test_configure_optimizers_decays_only_matrices_and_kernels():
    model = tiny_model()
    decay, no_decay = model.configure_optimizers(weight_decay=0.1, lr=1e-3, betas=(0.9, 0.95)).param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    assert any(p is model.news.no_news for p in no_decay["params"])


def test_market_lr_scale_puts_the_market_side_in_its_own_slower_groups():
    model = tiny_model()
    groups = model.configure_optimizers(weight_decay=0.1, lr=1e-3, betas=(0.9, 0.95), market_lr_scale=0.1).param_groups
    assert [(g["lr"], g["weight_decay"]) for g in groups] == [(1e-3, 0.1), (1e-3, 0.0), (1e-4, 0.1), (1e-4, 0.0)]
    slow = {id(p) for g in groups[2:] for p in g["params"]}
    assert slow == {id(p) for p in model.market_parameters()}
    assert all(id(p) in slow for p in model.market.parameters()) and all(
        id(p) in slow for p in model.fusion.market_gate.parameters())
    assert not any(id(p) in slow for p in (*model.news.parameters(), *model.head.parameters()))
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_checkpoint_round_trip_gives_identical_logits(tmp_path):
    model = tiny_model()
    model.save_checkpoint(tmp_path / "model.safetensors")
    loaded = CgaModel.from_checkpoint(tmp_path / "model.safetensors")
    inputs = cga_example_inputs(model.config, 3)
    assert loaded.config == model.config
    assert torch.equal(logits_of(model, inputs), logits_of(loaded, inputs))


def test_training_loss_adds_each_streams_own_sharpe_from_its_own_head():
    model = tiny_model(surrogate_mix=0.3, lambda_streams=0.4).train()
    targets = targets_for(4)
    inputs = cga_example_inputs(model.config, 4)
    out = model(*inputs, targets=targets)
    c = model.config
    fused = configured_loss(c, surrogate_weights(out.logits, c.top_k, 0.3), targets)
    def sequences(x: torch.Tensor) -> torch.Tensor:  # (B, L, N, C) -> (B·N, L, C), one sequence per asset
        return x.transpose(1, 2).flatten(0, 1)

    streams = {
        "news": model.news(sequences(model.news.asset_inputs(*inputs[:4]))),
        "market": model.market(sequences(model.market.asset_inputs(inputs[4]))),
    }
    own = {}
    for name, seq in streams.items():
        logits = model.stream_heads[name](seq).reshape(4, N_ASSETS)  # (B·N, 1) -> (B, N)
        logits = logits - logits.mean(dim=-1, keepdim=True)  # centred like the fused logits
        own[name] = sharpe_loss(surrogate_weights(logits, c.top_k, 0.3), targets, c.sharpe_eps)
    torch.testing.assert_close(out.loss, fused + 0.4 * (own["news"] + own["market"]))
    torch.testing.assert_close(out.loss_terms["news_stream_sharpe"], own["news"])
    # at inference, and for one-stream models, the stream heads play no part
    assert "news_stream_sharpe" not in model.eval()(*inputs, targets=targets).loss_terms
    assert tiny_model(streams="news").stream_heads is None


def test_lambda_market_head_starts_the_model_as_its_news_side_and_penalises_reading_the_bars():
    model = tiny_model(lambda_market_head=0.5, lambda_streams=0.0).train()
    columns = model.market_head_columns()
    assert columns.tolist() == [*range(16, 32), *range(48, 64)]  # d_model 16: [news, market] x [mean, last]
    assert not model.head.out.weight[:, columns].any() and model.head.out.weight.abs().sum() > 0
    inputs, targets = cga_example_inputs(model.config, 4), targets_for(4)
    without = tiny_model(lambda_market_head=0.0, lambda_streams=0.0).train()
    without.load_state_dict(model.state_dict())
    assert torch.equal(model(*inputs, targets=targets).loss, without(*inputs, targets=targets).loss)  # weights at 0
    with torch.no_grad():
        model.head.out.weight[:, columns] = 0.1
        without.head.out.weight[:, columns] = 0.1
    out = model(*inputs, targets=targets)
    torch.testing.assert_close(out.loss, without(*inputs, targets=targets).loss + 0.5 * 32 * 0.01)
    torch.testing.assert_close(out.loss_terms["market_head_norm"], torch.tensor(0.32))
    assert "market_head_norm" not in model.eval()(*inputs, targets=targets).loss_terms


def test_an_assets_logit_follows_the_asset_not_its_slot():
    """Shared per-asset weights: permuting the universe permutes the logits, nothing else changes."""
    model = tiny_model()
    news_emb, coverage, market_emb, market_mask, market = cga_example_inputs(model.config, 3)
    perm = torch.tensor([3, 0, 4, 1, 2])
    permuted = (news_emb[:, :, perm], coverage[..., perm], market_emb, market_mask, market[:, :, perm])
    original = (news_emb, coverage, market_emb, market_mask, market)
    torch.testing.assert_close(logits_of(model, permuted), logits_of(model, original)[:, perm])


def test_loading_refuses_a_state_with_a_wrong_shape():
    model = tiny_model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["head.out.weight"] = torch.zeros(2, state["head.out.weight"].shape[1])
    with pytest.raises(ValueError, match=r"head.out.weight: \(2, 64\) vs model \(1, 64\)"):
        model.load_checked_state_dict(state)


def test_loading_refuses_a_state_with_missing_tensors():
    model = tiny_model()
    state = dict(model.state_dict())
    state.pop("head.out.bias")
    before = model.head.out.weight.clone()
    with pytest.raises(ValueError, match=r"checkpoint has \d+ tensors, the model has \d+"):
        model.load_checked_state_dict({k: torch.zeros_like(v) for k, v in state.items()})
    assert torch.equal(model.head.out.weight, before)  # nothing copied


def penalised(setting: str, weight: float) -> tuple[CgaModel, CgaOutput, torch.Tensor]:
    """A tiny model with loss weight `setting` = `weight` in training mode, its output on 4 windows, and how much
    its loss exceeds that of the same model with the setting at 0: the penalty as a tensor of the model's own
    parameters, so its gradient is the penalty's alone."""
    model = tiny_model(**{setting: weight}, lambda_streams=0.0, dropout=0.0).train()
    inputs, targets = cga_example_inputs(model.config, 4), targets_for(4)
    out = model(*inputs, targets=targets)
    weighted, model.config = model.config, dataclasses.replace(model.config, **{setting: 0.0})
    unpenalised = model(*inputs, targets=targets).loss
    model.config = weighted
    return model, out, out.loss - unpenalised


def test_lambda_tilt_adds_the_weighted_squared_mean_book_and_its_gradient_reaches_the_model():
    model, out, penalty = penalised("lambda_tilt", 2.0)
    train_weights = surrogate_weights(out.logits, model.config.top_k, model.config.surrogate_mix)
    torch.testing.assert_close(out.loss_terms["tilt"], train_weights.detach().mean(dim=0).square().sum())
    assert out.loss_terms["tilt"] > 0
    torch.testing.assert_close(penalty, 2.0 * out.loss_terms["tilt"])
    penalty.backward()
    assert model.head.out.weight.grad.abs().sum() > 0


def test_lambda_news_gate_adds_the_weighted_mean_news_gate_and_closes_it():
    model, out, penalty = penalised("lambda_news_gate", 0.5)
    gate = out.loss_terms["news_gate"]
    assert 0.0 < gate.item() < 0.5  # the gates start mostly closed
    torch.testing.assert_close(penalty, 0.5 * gate)
    penalty.backward()
    assert (model.fusion.news_gate.gate.bias.grad > 0).all()  # every channel's gate is pushed shut
    inputs, targets = cga_example_inputs(model.config, 4), targets_for(4)
    assert "news_gate" not in model.eval()(*inputs, targets=targets).loss_terms
    concat = tiny_model(lambda_news_gate=0.5, fusion="concat").train()
    assert "news_gate" not in concat(*inputs, targets=targets).loss_terms  # no cross-attention, nothing to penalise


def test_fusion_fuse_gives_the_forward_sequence_and_the_news_gate_it_used():
    model = tiny_model(dropout=0.0)
    seq = torch.randn(2 * N_ASSETS, model.config.lookback, model.config.d_model)
    other = torch.randn_like(seq)
    fused, gate = model.fusion.fuse(seq, other)
    torch.testing.assert_close(fused, model.fusion(seq, other))
    attended = model.fusion.news_gate.attn(seq, other, other, need_weights=False)[0]
    torch.testing.assert_close(fused[..., : model.config.d_model], gate * attended + (1 - gate) * seq)
