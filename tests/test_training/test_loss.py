"""The CGA loss terms against values worked out by hand on tiny tensors."""

from __future__ import annotations

import statistics

import pytest
import torch

from training.loss import (
    cga_loss,
    diversification_loss,
    net_exposure_loss,
    per_sample_sharpe,
    portfolio_path,
    sharpe_loss,
    tilt_loss,
    turnover_loss,
)

# two samples, two assets, a horizon of three bars
WEIGHTS = torch.tensor([[0.5, -0.5], [1.0, 0.0]])
TARGETS = torch.tensor(
    [
        [[0.01, 0.00], [0.03, 0.01], [0.00, 0.02]],  # path 0.5·(a - b): 0.005, 0.010, -0.010
        [[0.02, 0.05], [-0.01, 0.00], [0.01, -0.03]],  # path a: 0.02, -0.01, 0.01
    ]
)
PATHS = ([0.005, 0.010, -0.010], [0.02, -0.01, 0.01])


def test_portfolio_path_holds_the_weights_over_every_bar():
    torch.testing.assert_close(portfolio_path(WEIGHTS, TARGETS), torch.tensor(PATHS))


def test_sharpe_loss_is_minus_the_mean_of_per_sample_mean_over_stdev():
    expected = [statistics.mean(p) / statistics.stdev(p) for p in PATHS]
    torch.testing.assert_close(per_sample_sharpe(WEIGHTS, TARGETS, eps=1e-12), torch.tensor(expected))
    torch.testing.assert_close(sharpe_loss(WEIGHTS, TARGETS, eps=1e-12), torch.tensor(-sum(expected) / 2))


def test_sharpe_loss_has_a_finite_gradient_on_a_flat_book():
    weights = torch.zeros(2, 2, requires_grad=True)
    loss = sharpe_loss(weights, TARGETS, eps=1e-12)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.isfinite(weights.grad).all()


def test_sharpe_loss_needs_two_bars():
    with pytest.raises(ValueError, match="at least 2 bars, got 1"):
        sharpe_loss(WEIGHTS, TARGETS[:, :1], eps=1e-12)


def test_portfolio_path_rejects_mismatched_assets():
    with pytest.raises(ValueError, match=r"\(2, 3\) and \(2, 3, 2\)"):
        portfolio_path(torch.zeros(2, 3), TARGETS)


def test_diversification_loss_is_the_mean_squared_weight():
    # (0.25 + 0.25 + 1 + 0) / 4
    torch.testing.assert_close(diversification_loss(WEIGHTS), torch.tensor(0.375))


def test_net_exposure_loss_is_the_mean_squared_net_weight():
    # nets 0 and 1 -> (0 + 1) / 2
    torch.testing.assert_close(net_exposure_loss(WEIGHTS), torch.tensor(0.5))


def test_turnover_loss_is_the_mean_gross_change_from_the_previous_book():
    prev = torch.tensor([[0.5, 0.5], [0.25, -0.75]])
    # |0| + |-1| = 1 and |0.75| + |0.75| = 1.5 -> 1.25
    torch.testing.assert_close(turnover_loss(WEIGHTS, prev), torch.tensor(1.25))


def test_turnover_loss_is_zero_without_a_previous_book():
    assert turnover_loss(WEIGHTS, None).item() == 0.0


def test_turnover_loss_rejects_a_previous_book_of_another_shape():
    with pytest.raises(ValueError, match=r"\(1, 2\) must match weights \(2, 2\)"):
        turnover_loss(WEIGHTS, torch.zeros(1, 2))


def test_tilt_loss_penalises_a_book_held_in_every_window():
    # long asset 0 and short asset 1 by 0.5 in all three windows: mean book (0.5, -0.5) -> 0.25 + 0.25
    constant = torch.tensor([[0.5, -0.5, 0.0]]).repeat(3, 1)
    torch.testing.assert_close(tilt_loss(constant), torch.tensor(0.5))
    # WEIGHTS: mean book (0.75, -0.25) -> 0.5625 + 0.0625
    torch.testing.assert_close(tilt_loss(WEIGHTS), torch.tensor(0.625))


def test_tilt_loss_leaves_books_whose_sign_changes_across_windows_free():
    # every book is fully invested, but the bets flip with the window: no asset is held on average
    alternating = torch.tensor([[0.5, -0.5, 0.0], [-0.5, 0.5, 0.0], [0.0, 0.5, -0.5], [0.0, -0.5, 0.5]])
    assert tilt_loss(alternating).item() == 0.0
    assert diversification_loss(alternating).item() > 0.0


def test_tilt_loss_gradient_pushes_each_window_against_the_mean_book():
    weights = WEIGHTS.clone().requires_grad_(True)
    tilt_loss(weights).backward()
    # d/dw_bn of Σ_n m_n² with m = mean over B windows: 2·m_n / B, the same for every window
    torch.testing.assert_close(weights.grad, torch.tensor([[0.75, -0.25], [0.75, -0.25]]))


def test_cga_loss_is_the_weighted_sum_of_its_terms():
    prev = torch.tensor([[0.5, 0.5], [0.25, -0.75]])
    total, terms = cga_loss(
        WEIGHTS, TARGETS, prev, lambda_div=0.1, lambda_net=0.2, lambda_turnover=0.3, lambda_tilt=0.4, sharpe_eps=1e-12
    )
    sharpe = -sum(statistics.mean(p) / statistics.stdev(p) for p in PATHS) / 2
    expected = sharpe + 0.1 * 0.375 + 0.2 * 0.5 + 0.3 * 1.25 + 0.4 * 0.625
    torch.testing.assert_close(total, torch.tensor(expected))
    assert set(terms) == {"sharpe", "diversification", "net_exposure", "turnover", "tilt"}
    torch.testing.assert_close(terms["turnover"], torch.tensor(1.25))
    assert not any(t.requires_grad for t in terms.values())
