"""The maths of the forward processes: wrapped-normal score, lambda_t, D3PM posterior."""

import math

import pytest
import torch

from model.diffusion import (
    DiffusionConfig,
    Schedule,
    cosine_betas,
    sampling_timesteps,
    species_posterior,
    wrapped_normal_score,
)


def wrapped_normal_log_density(x: torch.Tensor, sigma: float, terms: int = 10) -> torch.Tensor:
    k = torch.arange(-terms, terms + 1, dtype=torch.float64)
    return torch.logsumexp(-((x[:, None] + k) ** 2) / (2 * sigma**2), dim=-1)


@pytest.mark.parametrize("sigma", [0.005, 0.05, 0.3, 0.5])
def test_wrapped_normal_score_is_the_derivative_of_the_log_density(sigma):
    x = torch.linspace(-0.49, 0.49, 41, dtype=torch.float64) * min(1.0, 8 * sigma)
    h = 1e-6 * sigma
    finite_difference = (wrapped_normal_log_density(x + h, sigma) - wrapped_normal_log_density(x - h, sigma)) / (2 * h)
    score = wrapped_normal_score(x, torch.tensor(sigma, dtype=torch.float64), 10)
    torch.testing.assert_close(score, finite_difference, rtol=1e-5, atol=1e-6 / sigma)


def test_wrapped_normal_score_is_periodic_and_odd():
    x = torch.rand(100, dtype=torch.float64) - 0.5
    sigma = torch.tensor(0.4, dtype=torch.float64)
    torch.testing.assert_close(wrapped_normal_score(x + 1, sigma, 10), wrapped_normal_score(x, sigma, 10))
    torch.testing.assert_close(wrapped_normal_score(-x, sigma, 10), -wrapped_normal_score(x, sigma, 10))


def test_schedules_follow_method_constants():
    schedule = Schedule(DiffusionConfig(timesteps=100, lambda_draws=2000))
    assert schedule.sigma[0] == 0
    assert math.isclose(schedule.sigma[1].item(), 0.005, rel_tol=1e-6)
    assert math.isclose(schedule.sigma[100].item(), 0.5, rel_tol=1e-6)
    assert (schedule.alpha_bar[1:] < schedule.alpha_bar[:-1]).all()
    betas = cosine_betas(1000, 0.008)
    assert betas.min() >= 1e-4 and betas.max() <= 0.9999
    # For small sigma the wrapped normal is a normal: E[score^2] = 1 / sigma^2.
    assert math.isclose(schedule.lambda_t[1].item(), 1 / 0.005**2, rel_tol=0.05)
    # For large sigma the density flattens and lambda_t falls far below 1 / sigma^2.
    assert schedule.lambda_t[100] < 0.1 / 0.5**2


def brute_force_posterior(a_t: int, a0: torch.Tensor, betas: torch.Tensor, t: int, K: int) -> torch.Tensor:
    """q(a_{t-1} | a_t, a_0) from explicit transition matrices (D3PM eq. 3)."""
    eye, ones = torch.eye(K, dtype=torch.float64), torch.ones(K, K, dtype=torch.float64)
    Q = [(1 - b) * eye + b / K * ones for b in betas]
    Q_bar_prev = eye
    for s in range(t - 1):
        Q_bar_prev = Q_bar_prev @ Q[s]
    one_hot_t = torch.zeros(K, dtype=torch.float64)
    one_hot_t[a_t] = 1
    unnormalised = (one_hot_t @ Q[t - 1].T) * (a0 @ Q_bar_prev)
    return unnormalised / unnormalised.sum()


@pytest.mark.parametrize("t", [1, 2, 7, 20])
def test_species_posterior_matches_brute_force_and_sums_to_one(t):
    K = 6
    betas = cosine_betas(20, 0.008)
    alpha_bar = torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - betas, 0)])
    generator = torch.Generator().manual_seed(t)
    a0 = torch.softmax(torch.randn(K, generator=generator, dtype=torch.float64), 0)
    for a_t in range(K):
        one_hot = torch.zeros(1, 1, K, dtype=torch.float64)
        one_hot[..., a_t] = 1
        ours = species_posterior(one_hot, a0.view(1, 1, K), alpha_bar[t].view(1), alpha_bar[t - 1].view(1))
        torch.testing.assert_close(ours.view(K), brute_force_posterior(a_t, a0, betas, t, K))
        assert math.isclose(ours.sum().item(), 1.0, rel_tol=1e-12)


def test_strided_timesteps_cover_t_to_one():
    assert sampling_timesteps(1000, 1000) == list(range(1000, 0, -1))
    grid = sampling_timesteps(1000, 50)
    assert grid[0] == 1000 and grid[-1] == 1 and len(grid) == 50
    assert all(a > b for a, b in zip(grid, grid[1:], strict=False))
    with pytest.raises(ValueError):
        sampling_timesteps(1000, 0)
