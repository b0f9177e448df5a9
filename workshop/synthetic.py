"""A synthetic log-likelihood matrix with family structure, for measuring the text budget and
the intervals at the paper's scale (K = 1,000 models x N = 10,000 texts) without scoring.

Model i of family f on text s (nats):

    L[i, s] = -n_tok[s] * (h + strength_i)              length and model strength
              + scale[s] * (u_f[s] + tau * v_i[s])        family direction, own deviation
              + noise * scale[s] * e_is

``scale[s]`` is log-normal, so a few texts vary across models far more than most (as code,
tables and rare languages do in a real corpus): the case where LS sampling helps.
"""

import numpy as np


def synthetic_loglik(
    K: int = 1000,
    N: int = 10_000,
    n_families: int = 50,
    tau: float = 0.3,
    noise: float = 0.1,
    scale_sigma: float = 0.8,
    seed: int = 0,
) -> tuple[np.ndarray, list[str]]:
    """(L as K x N float32 nats, the family name of each row)."""
    rng = np.random.default_rng(seed)
    n_tok = rng.integers(150, 330, size=N).astype(np.float64)
    scale = rng.lognormal(0.0, scale_sigma, size=N)
    family = rng.integers(0, n_families, size=K)
    U = rng.standard_normal((n_families, N))
    strength = rng.normal(0.0, 0.3, size=K)
    L = np.empty((K, N), dtype=np.float32)
    for i in range(K):
        own = U[family[i]] + tau * rng.standard_normal(N) + noise * rng.standard_normal(N)
        L[i] = -n_tok * (3.0 + strength[i]) + scale * own
    return L, [f"fam{f:03d}" for f in family]
