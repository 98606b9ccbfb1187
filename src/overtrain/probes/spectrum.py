"""Top eigenvalues and trace of a symmetric operator given only as a matrix-vector product v ↦ Av (for the
sharpness probe, A = H the Hessian of the loss; `overtrain.probes.hessian`).

Eigenvalues are the *algebraic* top k, ``λ_1 ≥ λ_2 ≥ …``, each reported with the residual ``‖Ay − λy‖``
of its vector (the eigenvalue is within this of a true eigenvalue of A). Two methods:

- *Lanczos* — m steps from a seeded Gaussian start with full reorthogonalisation (twice, so the basis
  stays orthogonal to working precision and no ghost copies of λ_1 appear); the Ritz values are the
  eigenvalues of the m × m tridiagonal T (``torch.linalg.eigh`` in float64), and ``β_m |s_{m,i}|`` (the
  last component of T's eigenvector times the next off-diagonal) is the residual ``‖Ay − θy‖`` of each
  Ritz pair, reported with it. On breakdown (β ≈ 0: an invariant subspace, e.g. A = 0) it restarts from a
  new random vector orthogonal to the basis. It keeps the m basis vectors: m·n numbers.
- *Power iteration* — with projection deflation (each iterate is kept orthogonal to the eigenvectors
  already found). Plain power iteration finds the eigenvalue of largest *magnitude*; to return the top-k
  in algebraic order it runs on ``A + cI`` with c the spectral radius estimated by a first, unshifted run
  (``‖Av‖`` of its last unit iterate), which makes the operator positive semi-definite with the same
  eigenvectors (the first run's pair is kept as λ_1 when it is ≥ 0 and its residual is small). The
  residual ``‖Av − λv‖`` of the last iterate is reported.

Lanczos is the default of the probe: it needs far fewer products for the same accuracy.

*Hutchinson trace*: ``tr(A) = E[zᵀAz]`` for Rademacher z (entries ±1): unbiased, with variance
``2 Σ_{i≠j} A_ij²``. The estimate is the mean of n samples, its standard error the sample sd / √n.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

MatVec = Callable[[torch.Tensor], torch.Tensor]
"""A symmetric linear operator on flat vectors (here: v ↦ Hv)."""


@dataclass(frozen=True)
class EigenEstimate:
    """Top Hessian eigenvalues, largest first, nats/token per unit parameter².

    Attributes:
        values: λ_1 ≥ λ_2 ≥ … (at most k; fewer when n < k).
        residuals: per value, ``‖Hy − λy‖`` of its (Ritz) vector: the eigenvalue is within this of a
            true eigenvalue of H.
        method: ``lanczos`` or ``power``.
        matvecs: Hessian-vector products spent.
    """

    values: tuple[float, ...]
    residuals: tuple[float, ...]
    method: str
    matvecs: int


@dataclass(frozen=True)
class TraceEstimate:
    """Hutchinson estimate of tr(H_S), nats/token per unit parameter².

    Attributes:
        mean: the estimate (mean of the samples zᵀHz).
        se: sample sd / √samples (NaN for one sample).
        samples: number of Rademacher samples.
        values: each sample's zᵀHz.
    """

    mean: float
    se: float
    samples: int
    values: tuple[float, ...]


def lanczos(
    matvec: MatVec,
    n: int,
    k: int,
    *,
    iterations: int,
    generator: torch.Generator,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
) -> EigenEstimate:
    """Top-k eigenvalues (algebraic) of a symmetric operator by m-step Lanczos with full
    reorthogonalisation; see the module docstring.

    Args:
        matvec: v ↦ Av for flat vectors of length n.
        n: dimension.
        k: eigenvalues wanted (fewer if n < k).
        iterations: Krylov steps m (capped at n; m = n gives the whole spectrum, to rounding).
        generator: CPU generator of the start (and restart) vectors.
        dtype, device: of the Krylov vectors.
    """
    if iterations < 1:
        raise ValueError("iterations must be >= 1")
    m = min(iterations, n)
    eps = torch.finfo(dtype).eps
    basis = torch.zeros(m, n, dtype=dtype, device=device)
    alphas, betas = [], []
    q = _unit(torch.randn(n, generator=generator, dtype=torch.float64).to(device, dtype))
    beta, scale = 0.0, 0.0
    for j in range(m):
        basis[j] = q
        w = matvec(q)
        alphas.append(float(torch.dot(q, w)))
        w = _orthogonalise(w, basis[: j + 1])  # replaces the three-term subtraction, and keeps Q orthogonal
        beta = float(w.norm())
        scale = max(scale, abs(alphas[-1]), beta)
        if j == m - 1:
            break
        if beta <= 10 * eps * scale:  # invariant subspace: its Ritz values are exact; restart elsewhere
            w = _orthogonalise(
                torch.randn(n, generator=generator, dtype=torch.float64).to(device, dtype), basis[: j + 1]
            )
            betas.append(0.0)
        else:
            betas.append(beta)
        q = _unit(w)
    t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if betas:
        off = torch.tensor(betas, dtype=torch.float64)
        t += torch.diag(off, 1) + torch.diag(off, -1)
    theta, s = torch.linalg.eigh(t)
    order = torch.argsort(theta, descending=True)[: min(k, m)]
    residuals = (beta * s[-1, order].abs()).tolist()  # ‖Ay − θy‖ = β_m |e_mᵀ s| for Ritz pair (θ, y)
    return EigenEstimate(tuple(theta[order].tolist()), tuple(residuals), "lanczos", m)


def power_iteration(
    matvec: MatVec,
    n: int,
    k: int,
    *,
    iterations: int,
    tol: float,
    generator: torch.Generator,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
) -> EigenEstimate:
    """Top-k eigenvalues (algebraic) of a symmetric operator by power iteration with projection
    deflation on the shifted operator ``A + cI``, c the spectral radius estimate (module docstring).

    Args: as `lanczos`; `iterations` is the most per eigenvalue, `tol` the stopping change of the
    Rayleigh quotient relative to the spectral radius.
    """
    if iterations < 1:
        raise ValueError("iterations must be >= 1")
    k = min(k, n)
    count = [0]

    def counted(v: torch.Tensor) -> torch.Tensor:
        count[0] += 1
        return matvec(v)

    def start() -> torch.Tensor:
        return torch.randn(n, generator=generator, dtype=torch.float64).to(device, dtype)

    dominant = _power(counted, start(), [], 0.0, iterations, tol)
    # ‖Av‖ of the unit iterate rises monotonically to the spectral radius whatever the signs (and is
    # ≥ |vᵀAv|); the top of A + cI is A's algebraic top once c ≥ (|λ_min| − λ_max)/2.
    shift = dominant.norm
    found: list[_PowerRun] = []
    # A converged dominant pair with λ ≥ 0 is the top one. The residual test, not the Rayleigh quotient's
    # standstill, decides: with eigenvalues ±a the quotient stalls anywhere in [−a, a].
    if k and dominant.value >= 0 and dominant.residual <= math.sqrt(tol) * max(shift, abs(dominant.value)):
        found.append(dominant)
    while len(found) < k:
        found.append(_power(counted, start(), [f.vector for f in found], shift, iterations, tol))
    found.sort(key=lambda f: -f.value)  # deflated runs on a PSD operator come out in order, up to ties
    return EigenEstimate(tuple(f.value for f in found), tuple(f.residual for f in found), "power", count[0])


@dataclass(frozen=True)
class _PowerRun:
    value: float  # Rayleigh quotient vᵀAv of the last iterate multiplied
    vector: torch.Tensor  # the next iterate: the best eigenvector estimate
    residual: float  # ‖Av − λv‖ of that last iterate
    norm: float  # ‖(A + shift·I) v‖ on the deflated subspace


def _power(
    matvec: MatVec, v: torch.Tensor, found: list[torch.Tensor], shift: float, iterations: int, tol: float
) -> _PowerRun:
    """Largest eigenvalue of (A + shift·I) on the complement of `found`, minus the shift."""
    basis = torch.stack(found) if found else None
    v = _unit(_orthogonalise(v, basis))
    mu = None
    for _ in range(iterations):
        shifted = matvec(v) + shift * v
        new = float(torch.dot(v, shifted))
        residual = float((shifted - new * v).norm())
        w = _orthogonalise(shifted, basis)
        norm = float(w.norm())
        if norm == 0.0:  # A + shift·I vanishes on this subspace (A = 0 and no shift): v is exact
            return _PowerRun(new - shift, v, residual, 0.0)
        done = mu is not None and abs(new - mu) <= tol * max(abs(new), shift)
        mu, v = new, w / norm
        if done:
            return _PowerRun(mu - shift, v, residual, norm)
    return _PowerRun(mu - shift, v, residual, norm)


def hutchinson(
    matvec: MatVec,
    n: int,
    samples: int,
    *,
    generator: torch.Generator,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
) -> TraceEstimate:
    """tr(A) ≈ mean of zᵀAz over Rademacher z; sample i is the same whatever `samples` is."""
    values = []
    for _ in range(samples):
        z = (torch.randint(0, 2, (n,), generator=generator) * 2 - 1).to(device, dtype)
        values.append(float(torch.dot(z, matvec(z))))
    mean = math.fsum(values) / samples
    if samples < 2:
        return TraceEstimate(mean, math.nan, samples, tuple(values))
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in values) / (samples - 1))
    return TraceEstimate(mean, sd / math.sqrt(samples), samples, tuple(values))


def _orthogonalise(w: torch.Tensor, basis: torch.Tensor | None) -> torch.Tensor:
    """w minus its projection on the rows of `basis` (orthonormal), twice: one classical Gram-Schmidt
    pass loses orthogonality in floating point, two are enough (Kahan-Parlett)."""
    if basis is None or basis.numel() == 0:
        return w
    for _ in range(2):
        w = w - basis.T @ (basis @ w)
    return w


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm()
