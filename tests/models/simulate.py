"""Customers simulated from the models' own stories, with per-customer parameters.

Independent of the code under test: each model is simulated from its definition (Poisson
purchases, exponential or geometric dropout, gamma spend), not from its likelihood.
"""

import numpy as np
import pandas as pd


def customers_with_covariates(rng, n, channel_share=0.4):
    """A two-level channel (``web`` for ``channel_share`` of the customers, else ``store``) and
    a standardised-ish numeric ``age``; the design columns ``channel[web]`` and ``age``."""
    channel = np.where(rng.random(n) < channel_share, "web", "store")
    age = rng.normal(0.0, 1.0, n)
    return pd.DataFrame({"channel": channel, "age": age, "channel[web]": (channel == "web").astype(float)})


def pareto_nbd(rng, age, r, alpha, s, beta):
    """Pareto/NBD histories: lambda ~ Gamma(r, alpha_i), mu ~ Gamma(s, beta_i), lifetime ~ Exp(mu)."""
    n = len(age)
    rate = rng.gamma(r, 1.0 / np.broadcast_to(alpha, (n,)))
    dropout = rng.gamma(s, 1.0 / np.broadcast_to(beta, (n,)))
    lifetime = rng.exponential(1.0 / dropout)
    active = np.minimum(lifetime, age)
    x = rng.poisson(rate * active)
    # Given x arrivals on (0, active], the last is the largest of x uniforms.
    recency = np.where(x > 0, active * rng.random(n) ** (1.0 / np.maximum(x, 1)), 0.0)
    return pd.DataFrame({"frequency": x.astype(float), "recency": recency, "T": age})


def beta_geometric(rng, age, r, alpha, a, b, modified=False):
    """BG/NBD (or MBG/NBD) histories: lambda ~ Gamma(r, alpha_i), p ~ Beta(a_i, b_i); after each
    repeat purchase (and, for MBG/NBD, at the first) the customer drops out with probability p."""
    n = len(age)
    rate = rng.gamma(r, 1.0 / np.broadcast_to(alpha, (n,)))
    p = rng.beta(np.broadcast_to(a, (n,)), np.broadcast_to(b, (n,)))
    # Purchases made before dropping out: geometric on {1, 2, ...}, or {0, 1, ...} for MBG.
    before_dropout = rng.geometric(p) - (1 if modified else 0)
    arrivals = rng.poisson(rate * age)
    x = np.minimum(arrivals, before_dropout)
    # The x-th of `arrivals` uniform arrival times on (0, T]: T times a Beta(x, arrivals - x + 1).
    position = rng.beta(np.maximum(x, 1), np.maximum(arrivals - x + 1, 1))
    recency = np.where(x > 0, age * position, 0.0)
    return pd.DataFrame({"frequency": x.astype(float), "recency": recency, "T": age})


def gamma_gamma(rng, frequency, p, q, gamma):
    """Mean spend over x purchases: nu ~ Gamma(q, gamma_i), each amount ~ Gamma(p, nu), so the
    mean of x amounts is Gamma(p x, x nu). 0 for customers without repeat purchases."""
    frequency = np.asarray(frequency, dtype=float)
    n = len(frequency)
    nu = rng.gamma(q, 1.0 / np.broadcast_to(gamma, (n,)))
    shape = np.maximum(p * frequency, 1e-12)
    mean = rng.gamma(shape, 1.0 / (np.maximum(frequency, 1.0) * nu))
    return np.where(frequency > 0, mean, 0.0)
