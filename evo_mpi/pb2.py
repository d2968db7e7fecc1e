"""Population-Based Bandits (PB2) explore.

Parker-Holder et al. 2020, "Provably Efficient Online Hyperparameter
Optimization with Population-Based Bandits". Instead of multiplying the
donor's hyperparameters by a random factor, PB2 fits a time-varying Gaussian
process to the fitness *change* each member achieved over each interval, as a
function of (time, hyperparameters), and picks the loser's new numeric
hyperparameters by maximising a GP-UCB acquisition at the current time.

Pure numpy/scipy: no MPI, torch or SB3 import. Every draw comes from the
explicit ``np.random.Generator`` passed in.

Model (all constants below are module-level and documented):

* Numeric searched priors (``loguniform`` in log space, ``uniform``, ``int``)
  are mapped to [0, 1] within the prior's bounds; values outside are clipped.
  ``int`` values are rounded (by ``Prior.clip``) after the choice.
* Kernel: the PB2 time-varying squared exponential
  ``k = exp(-|x - x'|^2 / (2 l^2)) * (1 - eps) ** (|t - t'| / 2)`` with ``t``
  in raw generation units (so ``eps`` is a forgetting rate per generation and
  needs no normalisation by the run length), one isotropic length-scale ``l``
  over the normalised hyperparameters, unit signal variance on standardised
  deltas, plus a noise variance. ``(l, noise, eps)`` maximise the log marginal
  likelihood over the fixed grid :data:`LENGTHSCALES` x :data:`NOISES` x
  :data:`EPSILONS` (first maximum in grid order), fitted on the most recent
  :data:`FIT_OBSERVATIONS` observations.
* Data: the most recent :data:`MAX_OBSERVATIONS` observations by time (a
  stable sort, so later entries win ties), which bounds the cost to one
  Cholesky of at most ``MAX_OBSERVATIONS + len(pending)`` rows per call.
* Acquisition: UCB ``mean + sqrt(beta) * std`` at ``time``, maximised over a
  seeded candidate set: the donor's point, :data:`N_LOCAL` Gaussian
  perturbations of it (half with std :data:`LOCAL_SCALES` [0], half [1], in
  the normalised space, clipped) and :data:`N_UNIFORM` uniform points; ties go
  to the first candidate (the donor's point first).
* Batch diversity: ``pending`` (values already chosen for other losers this
  generation) are added at ``time`` as kriging-believer points: their value
  is the posterior mean, which leaves the mean unchanged and shrinks the
  variance around them (GP-BUCB, Desautels et al. 2014, as Ray's PB2 does).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .space import Prior, Value, explore


def _solve_triangular(low: np.ndarray, b: np.ndarray, lower: bool, check_finite: bool) -> np.ndarray:
    """The triangular solve of scipy, imported on first use: scipy.linalg costs every rank 0.2 s at start-up."""
    from scipy.linalg import solve_triangular

    return np.asarray(solve_triangular(low, b, lower=lower, check_finite=check_finite))


NUMERIC_KINDS = ("loguniform", "uniform", "int")
"""Prior kinds modelled by the GP; ``choice`` and ``const`` are explored PBT-style."""

PB2_BETA = 2.0
"""Default UCB exploration weight: acquisition = mean + sqrt(beta) * std on standardised deltas.

A fixed value keeps the choice easy to reason about; Ray's PB2 uses the growing
schedule ``0.2 + log(0.4 n)`` (about 2 to 6 for n = 10 to 1000 observations).
"""

MAX_OBSERVATIONS = 1000
"""At most this many (most recent) observations enter the GP: bounds the O(n^3) Cholesky."""

FIT_OBSERVATIONS = 200
"""The kernel grid search uses the most recent this-many observations (one small Cholesky per grid point)."""

LENGTHSCALES = (0.05, 0.1, 0.2, 0.35, 0.6, 1.0)
"""Grid of isotropic length-scales, in normalised hyperparameter units."""

NOISES = (0.01, 0.05, 0.2, 0.5)
"""Grid of noise variances, relative to the standardised deltas' unit variance."""

EPSILONS = (0.0, 0.05, 0.15, 0.3)
"""Grid of time-forgetting rates per generation of the time-varying kernel (0: time ignored)."""

N_UNIFORM = 1000
"""Uniform random candidates in the normalised box."""

N_LOCAL = 200
"""Gaussian perturbations of the donor's point among the candidates."""

LOCAL_SCALES = (0.02, 0.1)
"""Standard deviations (normalised units) of the two halves of the local candidates."""

_JITTER = 1e-9


@dataclass(frozen=True)
class Observation:
    """One member's fitness change over one interval.

    Attributes:
        time: Generation index when the interval started.
        hparams: Hyperparameters used during the interval.
        delta: Fitness change over the interval (finite; non-finite ones are ignored).

    """

    time: float
    hparams: Mapping[str, Value]
    delta: float


@dataclass(frozen=True)
class KernelParams:
    """Time-varying squared-exponential kernel parameters.

    Attributes:
        lengthscale: Isotropic length-scale over the normalised hyperparameters.
        noise: Noise variance (relative to the unit signal variance).
        epsilon: Forgetting rate per unit of time, in [0, 1).

    """

    lengthscale: float
    noise: float
    epsilon: float


def _sq_dist(x1: np.ndarray, x2: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances, one coordinate at a time (exact, no BLAS reordering)."""
    sq = np.zeros((x1.shape[0], x2.shape[0]))
    for k in range(x1.shape[1]):
        sq += (x1[:, k, None] - x2[None, :, k]) ** 2
    return sq


def _kernel_from(sq: np.ndarray, dt: np.ndarray, params: KernelParams) -> np.ndarray:
    out = np.exp(-0.5 / params.lengthscale**2 * sq)
    if params.epsilon > 0.0:
        out *= np.exp(0.5 * math.log1p(-params.epsilon) * dt)
    return out


def kernel(t1: np.ndarray, x1: np.ndarray, t2: np.ndarray, x2: np.ndarray, params: KernelParams) -> np.ndarray:
    """``exp(-|x1 - x2|^2 / (2 l^2)) * (1 - eps) ** (|t1 - t2| / 2)`` for every pair of rows."""
    return _kernel_from(_sq_dist(x1, x2), np.abs(t1[:, None] - t2[None, :]), params)


def _cholesky(a: np.ndarray) -> np.ndarray:
    """Lower Cholesky factor, adding growing diagonal jitter until it succeeds."""
    jitter = _JITTER
    eye = np.eye(a.shape[0])
    for _ in range(8):
        try:
            return np.linalg.cholesky(a + jitter * eye)
        except np.linalg.LinAlgError:
            jitter *= 100.0
    raise np.linalg.LinAlgError("kernel matrix is not positive definite even with jitter")


def log_marginal_likelihood(t: np.ndarray, x: np.ndarray, y: np.ndarray, params: KernelParams) -> float:
    """GP log marginal likelihood of ``y`` (zero mean, unit signal variance)."""
    k = kernel(t, x, t, x, params) + params.noise * np.eye(y.size)
    low = _cholesky(k)
    z = _solve_triangular(low, y, lower=True, check_finite=False)
    return float(-0.5 * z @ z - np.log(np.diag(low)).sum() - 0.5 * y.size * math.log(2.0 * math.pi))


def fit_kernel(t: np.ndarray, x: np.ndarray, y: np.ndarray) -> KernelParams:
    """The grid point with the highest log marginal likelihood (first in grid order on ties).

    Uses the last :data:`FIT_OBSERVATIONS` rows (callers sort by time).
    """
    t, x, y = t[-FIT_OBSERVATIONS:], x[-FIT_OBSERVATIONS:], y[-FIT_OBSERVATIONS:]
    sq = _sq_dist(x, x)
    dt = np.abs(t[:, None] - t[None, :])
    eye = np.eye(y.size)
    best, best_lml = KernelParams(LENGTHSCALES[0], NOISES[0], EPSILONS[0]), -math.inf
    for lengthscale in LENGTHSCALES:
        for epsilon in EPSILONS:
            base = _kernel_from(sq, dt, KernelParams(lengthscale, 0.0, epsilon))
            for noise in NOISES:
                low = _cholesky(base + noise * eye)
                z = _solve_triangular(low, y, lower=True, check_finite=False)
                lml = float(-0.5 * z @ z - np.log(np.diag(low)).sum())
                if lml > best_lml:
                    best, best_lml = KernelParams(lengthscale, noise, epsilon), lml
    return best


def gp_posterior(
    t: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    query_t: np.ndarray,
    query_x: np.ndarray,
    *,
    pending_t: np.ndarray | None = None,
    pending_x: np.ndarray | None = None,
    params: KernelParams | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mean and standard deviation of the latent function at the query points.

    ``y`` is standardised internally (a zero spread counts as 1) and the results
    are in ``y``'s units. Pending points enter as kriging believers: they leave
    the mean unchanged and reduce the standard deviation near them. One
    Cholesky of the (data + pending) kernel matrix; its leading block is the
    data-only factor used for the mean.

    Args:
        t: Observation times, shape (n,).
        x: Normalised observation points, shape (n, d).
        y: Observed values, shape (n,), n >= 1.
        query_t: Query times, shape (m,).
        query_x: Normalised query points, shape (m, d).
        pending_t: Times of hallucinated points, shape (p,).
        pending_x: Hallucinated points, shape (p, d).
        params: Kernel parameters; by default :func:`fit_kernel`.

    """
    ys, centre, spread = _standardise(y)
    if params is None:
        params = fit_kernel(t, x, ys)
    n = y.size
    if pending_t is not None and pending_x is not None and len(pending_t):
        all_t = np.concatenate([t, pending_t])
        all_x = np.concatenate([x, pending_x])
    else:
        all_t, all_x = t, x
    low = _cholesky(kernel(all_t, all_x, all_t, all_x, params) + params.noise * np.eye(all_t.size))
    cross = kernel(all_t, all_x, query_t, query_x, params)
    alpha = _solve_triangular(low[:n, :n], ys, lower=True, check_finite=False)
    mean = cross[:n].T @ _solve_triangular(low[:n, :n].T, alpha, lower=False, check_finite=False)
    v = _solve_triangular(low, cross, lower=True, check_finite=False)
    var = np.maximum(1.0 - np.einsum("ij,ij->j", v, v), 0.0)
    return centre + spread * mean, spread * np.sqrt(var)


def _standardise(y: np.ndarray) -> tuple[np.ndarray, float, float]:
    """``(y - mean) / sd`` with its mean and sd (a zero spread counts as 1)."""
    y = np.asarray(y, dtype=np.float64)
    centre = float(y.mean())
    spread = float(y.std())
    if not spread > 1e-12 * max(1.0, abs(centre)):
        spread = 1.0
    return (y - centre) / spread, centre, spread


def _numeric_names(space: Mapping[str, Prior]) -> list[str]:
    return sorted(n for n, p in space.items() if p.searched and p.kind in NUMERIC_KINDS)


def _to_unit(prior: Prior, value: float) -> float:
    if prior.kind == "loguniform":
        lo, hi = math.log(prior.low), math.log(prior.high)
        u = (math.log(value) - lo) / (hi - lo) if value > 0 else 0.0
    else:
        u = (value - prior.low) / (prior.high - prior.low)
    return min(max(u, 0.0), 1.0)


def _from_unit(prior: Prior, u: float) -> Value:
    if prior.kind == "loguniform":
        lo, hi = math.log(prior.low), math.log(prior.high)
        return prior.clip(math.exp(lo + u * (hi - lo)))
    return prior.clip(prior.low + u * (prior.high - prior.low))


def _point(hparams: Mapping[str, Value], names: Sequence[str], space: Mapping[str, Prior]) -> np.ndarray | None:
    """The normalised point of ``hparams``, or None if a value is missing or not a finite number."""
    out = np.empty(len(names))
    for k, name in enumerate(names):
        value = hparams.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return None
        out[k] = _to_unit(space[name], float(value))
    return out


def pb2_explore(
    donor_hparams: Mapping[str, Value],
    space: Mapping[str, Prior],
    observations: Sequence[Observation],
    time: float,
    rng: np.random.Generator,
    *,
    pending: Sequence[Mapping[str, Value]] = (),
    factors: Sequence[float] = (0.8, 1.2),
    resample_probability: float = 0.25,
    beta: float = PB2_BETA,
    params: KernelParams | None = None,
) -> dict[str, Value]:
    """New hyperparameters for a loser that copied ``donor_hparams``, chosen by PB2.

    Numeric searched hyperparameters are chosen jointly by GP-UCB (see the
    module docstring). ``choice`` hyperparameters are explored as
    :func:`evo_mpi.space.explore` does (same factors, same resample
    probability) and constants are set to their value. With fewer than 2
    usable observations (missing or non-numeric values, non-finite time or
    delta are dropped) or no numeric searched hyperparameter, the result is
    exactly ``explore(donor_hparams, space, factors, resample_probability, rng)``.

    Draw order: the candidate set (uniform, then local perturbations), then the
    ``explore`` draws for the non-numeric hyperparameters.

    Args:
        donor_hparams: The donor's hyperparameters (the loser's starting point).
        space: Priors; every name must be a key of ``donor_hparams``.
        observations: Past (time, hyperparameters, fitness change) triples.
        time: The generation index at which the new interval starts.
        rng: The loser's explore stream.
        pending: Values already chosen for other losers this generation.
        factors: PBT perturbation factors (fallback and ``choice`` priors).
        resample_probability: PBT resample probability (fallback and ``choice`` priors).
        beta: UCB weight, acquisition = mean + sqrt(beta) * std.
        params: The kernel fitted to ``observations`` by :func:`fit_observations`; the
            losers of one generation share it (omitted: fitted here, with the same result).

    Returns:
        A dict with the keys of ``donor_hparams``; every value inside its prior.

    Raises:
        ValueError: if a name in ``space`` is missing from ``donor_hparams`` or ``beta < 0``.

    """
    _check_arguments(donor_hparams, space, beta)
    names = _numeric_names(space)
    data = _training_data(observations, names, space)
    if data is None:
        return explore(donor_hparams, space, factors, resample_probability, rng)
    pending_t, pending_x = _pending_points(pending, names, space, time)
    donor = _donor_point(donor_hparams, names, space)
    best = _maximise_ucb(data, donor, time, pending_t, pending_x, rng, beta=beta, params=params)
    return _explore_others(donor_hparams, space, names, best, factors, resample_probability, rng)


def _check_arguments(donor_hparams: Mapping[str, Value], space: Mapping[str, Prior], beta: float) -> None:
    """ValueError for a name of ``space`` that ``donor_hparams`` lacks, or for a negative ``beta``."""
    missing = sorted(set(space) - set(donor_hparams))
    if missing:
        raise ValueError(f"pb2_explore: donor hyperparameters lack {', '.join(missing)}")
    if not beta >= 0.0:
        raise ValueError(f"pb2_explore: beta must be >= 0, got {beta}")


def _pending_points(
    pending: Sequence[Mapping[str, Value]], names: Sequence[str], space: Mapping[str, Prior], time: float
) -> tuple[np.ndarray, np.ndarray]:
    """Times (all ``time``) and unit-cube points of the usable pending values, the kriging believers."""
    pending_points = [p for p in (_point(h, names, space) for h in pending) if p is not None]
    pending_x = np.array(pending_points).reshape(len(pending_points), len(names))
    pending_t = np.full(len(pending_points), float(time))
    return pending_t, pending_x


def _donor_point(donor_hparams: Mapping[str, Value], names: Sequence[str], space: Mapping[str, Prior]) -> np.ndarray:
    """The donor's unit-cube point; ValueError when one of its numeric values is missing or not finite."""
    donor = _point(donor_hparams, names, space)
    if donor is None:
        raise ValueError(f"pb2_explore: donor hyperparameters {sorted(names)} must be finite numbers")
    return donor


def _maximise_ucb(
    data: tuple[np.ndarray, np.ndarray, np.ndarray],
    donor: np.ndarray,
    time: float,
    pending_t: np.ndarray,
    pending_x: np.ndarray,
    rng: np.random.Generator,
    *,
    beta: float,
    params: KernelParams | None,
) -> np.ndarray:
    """The candidate around ``donor`` with the highest GP-UCB at ``time`` (the first one on ties)."""
    t, x, y = data
    candidates = _candidates(donor, rng)
    mean, std = gp_posterior(
        t,
        x,
        y,
        np.full(len(candidates), float(time)),
        candidates,
        pending_t=pending_t,
        pending_x=pending_x,
        params=params,
    )
    return candidates[int(np.argmax(mean + math.sqrt(beta) * std))]


def _explore_others(
    donor_hparams: Mapping[str, Value],
    space: Mapping[str, Prior],
    names: Sequence[str],
    best: np.ndarray,
    factors: Sequence[float],
    resample_probability: float,
    rng: np.random.Generator,
) -> dict[str, Value]:
    """The non-numeric hyperparameters explored PBT-style, the numeric ones (``names``) set to the point ``best``."""
    others = {n: p for n, p in space.items() if n not in names}
    out = explore(donor_hparams, others, factors, resample_probability, rng)
    for k, name in enumerate(names):
        out[name] = _from_unit(space[name], float(best[k]))
    return out


def _candidates(donor: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Where the acquisition is evaluated (unit cube): the donor, two Gaussian clouds around it, uniform draws."""
    d = len(donor)
    uniform = rng.random((N_UNIFORM, d))
    half = N_LOCAL // 2
    local = np.concatenate(
        [
            donor + LOCAL_SCALES[0] * rng.standard_normal((half, d)),
            donor + LOCAL_SCALES[1] * rng.standard_normal((N_LOCAL - half, d)),
        ]
    )
    return np.concatenate([donor[None, :], np.clip(local, 0.0, 1.0), uniform])


def _training_data(
    observations: Sequence[Observation], names: Sequence[str], space: Mapping[str, Prior]
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(times, unit-cube points, fitness changes) of the usable observations, time-sorted, or None if < 2."""
    rows: list[tuple[float, np.ndarray, float]] = []
    if names:
        for obs in observations:
            point = _point(obs.hparams, names, space)
            if point is not None and math.isfinite(obs.time) and math.isfinite(obs.delta):
                rows.append((float(obs.time), point, float(obs.delta)))
    if len(rows) < 2:
        return None
    order = sorted(range(len(rows)), key=lambda i: rows[i][0])[-MAX_OBSERVATIONS:]
    return (
        np.array([rows[i][0] for i in order]),
        np.array([rows[i][1] for i in order]),
        np.array([rows[i][2] for i in order]),
    )


def fit_observations(observations: Sequence[Observation], space: Mapping[str, Prior]) -> KernelParams | None:
    """The kernel :func:`pb2_explore` would fit to ``observations``, once for all losers of a generation.

    None when PB2 would fall back to ``explore`` (fewer than 2 usable
    observations, or no numeric searched hyperparameter).
    """
    data = _training_data(observations, _numeric_names(space), space)
    if data is None:
        return None
    t, x, y = data
    return fit_kernel(t, x, _standardise(y)[0])
