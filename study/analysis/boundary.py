"""The study's boundary: a Gaussian-process model of the first objective, its level set, and a
sampler that puts trials where that level set is still uncertain.

One model serves three users, so they agree on where the boundary is:

- :class:`BoundarySampler` (``sampler: boundary`` in a search space) asks it where to run next;
- :func:`estimate` gives the plots (``make plots``, the dashboard's boundary figure) the current
  boundary, its 95% band and the share of the space still undecided, whichever sampler ran;
- :func:`boundary_settled` (``stop_when: boundary_settled``) stops a sweep once that share is
  small.

The model (:func:`fit_model`): scikit-learn's ``GaussianProcessRegressor`` over the swept
dimensions mapped to the unit cube (log dimensions in log), categorical ones one-hot; a Matern
5/2 kernel with one length scale per column, a fitted signal variance and a fitted
``WhiteKernel`` noise term, on standardized values. Every complete trial is one row, so the
replicates of a point (``seeds_per_point``) sit at the same input and are what the noise term is
fitted to. Length scales have a floor of the design's median spacing along each column: on a
lattice, a length scale below the spacing cannot be identified from the data, and a GP whose
length scale collapsed predicts the prior mean (one class) everywhere between the points.

The level (:func:`level_of`): the user's ``boundary_level``, else half-way between the base
model's value and the *fitted* ceiling (the best model mean at the observed points, not the
best noisy observation), re-estimated with every fit (Gotovos et al. 2013's implicit threshold;
science.md "The boundary level").

The acquisition: straddle (Bryan et al. 2005), 1.96 sd - |mean - level| of the latent
objective, by default; or ``acquisition: timse``, targeted integrated variance reduction
(Picheny et al. 2010), a one-step look-ahead over the whole space. ``make bench-boundary``
measured both on four synthetic surfaces (20 seeds), trials to 98% accuracy: sharp 26.5 vs
31.0, smooth 15.5 vs 15.7, dreams 10.5 vs 9.9, lr-4d 38.8 vs 41.7, and straddle's accuracy at
48-64 trials the higher on sharp and lr-4d; at a fraction of the cost, hence the default.
Trials RUNNING elsewhere are conditioned on with their predicted mean (kriging believer): their
variance no longer counts, so parallel workers spread out.
"""

from __future__ import annotations

import math
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState
from scipy import stats
from scipy.linalg import solve_triangular
from sklearn.gaussian_process import GaussianProcessRegressor
from threadpoolctl import threadpool_limits  # installed with scikit-learn

#: z of the two-sided 95% band: a point is undecided while |mean - level| < BAND_Z * sd.
BAND_Z = 1.96
#: ``stop_when: boundary_settled`` without a fraction: stop below this undecided share.
DEFAULT_SETTLED = 0.05
N_REFERENCE = 512  # Sobol points the undecided share and the acquisition integrate over
N_CANDIDATES = 2048  # Sobol candidates the acquisition is maximised over
MAX_ITER = 50  # L-BFGS-B iterations of a hyperparameter fit
LENGTH_SCALE_MAX = 20.0  # a column with this length scale is irrelevant (unit cube: 20x its width)
ACQUISITIONS = ("straddle", "timse")  # the first is the default (make bench-boundary)


# ---------------------------------------------------------------------------------------------
# The swept dimensions on the unit cube


class Encoder:
    """Swept parameters <-> model inputs.

    Each numeric dimension is one column in [0, 1] (log-scaled where declared); a categorical
    one is one column per value (one-hot). ``decode`` maps a point of the unit cube with one
    coordinate per *dimension* (a categorical takes the value whose interval holds it) to
    parameters the distributions accept (ints rounded, steps respected).
    """

    def __init__(self, distributions: dict[str, BaseDistribution]) -> None:
        self.distributions = dict(distributions)
        self.names = list(self.distributions)
        self.columns: list[tuple[str, Any]] = []  # (dimension, None | categorical index)
        for name, dist in self.distributions.items():
            if isinstance(dist, CategoricalDistribution):
                self.columns += [(name, i) for i in range(len(dist.choices))]
            else:
                self.columns.append((name, None))
        self.categorical = np.array([i is not None for _, i in self.columns])

    @property
    def width(self) -> int:
        return len(self.columns)

    def _unit(self, name: str, values: np.ndarray) -> np.ndarray:
        dist = self.distributions[name]
        lo, hi = float(dist.low), float(dist.high)
        values = np.asarray(values, dtype=float)
        if dist.log:
            lo, hi, values = math.log(lo), math.log(hi), np.log(values)
        return np.zeros_like(values) if hi <= lo else (values - lo) / (hi - lo)

    def encode_columns(self, values: dict[str, np.ndarray]) -> np.ndarray:
        """Model inputs of points given as one array per dimension (numeric: real units, may be
        non-integer; categorical: the values themselves)."""
        n = len(next(iter(values.values())))
        out = np.zeros((n, self.width))
        for j, (name, index) in enumerate(self.columns):
            if index is None:
                out[:, j] = self._unit(name, values[name])
            else:
                choice = self.distributions[name].choices[index]
                out[:, j] = [float(v == choice) for v in values[name]]
        return out

    def encode(self, params: Sequence[dict[str, Any]]) -> np.ndarray:
        return self.encode_columns({n: [p[n] for p in params] for n in self.names})

    def decode(self, unit: np.ndarray) -> list[dict[str, Any]]:
        """Parameters of points of the unit cube (one column per dimension)."""
        points: list[dict[str, Any]] = [{} for _ in range(len(unit))]
        for k, name in enumerate(self.names):
            dist = self.distributions[name]
            u = np.clip(unit[:, k], 0.0, 1.0)
            if isinstance(dist, CategoricalDistribution):
                idx = np.minimum((u * len(dist.choices)).astype(int), len(dist.choices) - 1)
                for p, i in zip(points, idx, strict=True):
                    p[name] = dist.choices[i]
                continue
            lo, hi = float(dist.low), float(dist.high)
            raw = np.exp(math.log(lo) + u * (math.log(hi) - math.log(lo))) if dist.log \
                else lo + u * (hi - lo)
            step = getattr(dist, "step", None)
            if step is not None:
                raw = lo + np.round((raw - lo) / step) * step
            raw = np.clip(raw, lo, hi)
            is_int = isinstance(dist, optuna.distributions.IntDistribution)
            for p, v in zip(points, raw, strict=True):
                p[name] = int(np.rint(v)) if is_int else float(v)
        return points

    def sobol(self, n: int, seed: int) -> list[dict[str, Any]]:
        """``n`` scrambled-Sobol points of the space (seeded)."""
        from scipy.stats import qmc

        with warnings.catch_warnings():  # balance needs n a power of 2; the sets here are
            warnings.simplefilter("ignore", UserWarning)
            unit = qmc.Sobol(len(self.names), scramble=True, seed=seed).random(n)
        return self.decode(unit)


# ---------------------------------------------------------------------------------------------
# The model


@dataclass
class BoundaryModel:
    """A fitted GP of the first objective; ``predict`` gives the latent mean and sd (no noise)."""

    encoder: Encoder
    gp: Any  # sklearn GaussianProcessRegressor on standardized values
    y_mean: float
    y_std: float
    X: np.ndarray  # the training inputs (one row per complete trial)

    @property
    def noise_sd(self) -> float:
        """The fitted observation noise, in the objective's units."""
        return math.sqrt(float(self.gp.kernel_.k2.noise_level)) * self.y_std

    @property
    def length_scales(self) -> np.ndarray:
        return np.atleast_1d(self.gp.kernel_.k1.k2.length_scale)

    def predict(self, X: np.ndarray, chunk: int = 20000) -> tuple[np.ndarray, np.ndarray]:
        mus, sds = [], []
        for i in range(0, len(X), chunk):
            mu, var = self._latent(X[i:i + chunk])
            mus.append(mu)
            sds.append(np.sqrt(var))
        return (np.concatenate(mus) * self.y_std + self.y_mean,
                np.concatenate(sds) * self.y_std)

    def _latent(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Standardized latent mean and variance (the signal kernel only, without the noise)."""
        signal = self.gp.kernel_.k1
        K = signal(self.X, X)
        mu = K.T @ self.gp.alpha_
        V = solve_triangular(self.gp.L_, K, lower=True, check_finite=False)
        var = np.maximum(signal.diag(X) - np.einsum("ij,ij->j", V, V), 1e-12)
        return mu, var

    def condition(self, X_new: np.ndarray) -> BoundaryModel:
        """The model after observing its own mean at ``X_new`` (kriging believer), same kernel."""
        if not len(X_new):
            return self
        mu, _ = self._latent(X_new)
        X = np.vstack([self.X, X_new])
        y = np.concatenate([self.gp.y_train_, mu])
        gp = GaussianProcessRegressor(kernel=self.gp.kernel_, optimizer=None, normalize_y=False)
        gp.fit(X, y)
        return BoundaryModel(self.encoder, gp, self.y_mean, self.y_std, X)


def _floors(X: np.ndarray, categorical: np.ndarray) -> np.ndarray:
    """Per column: the length-scale floor, the median spacing of the design's distinct values
    (one-hot columns: 0.1, which lets two values differ freely)."""
    out = np.full(X.shape[1], 0.1)
    for j in range(X.shape[1]):
        if categorical[j]:
            continue
        gaps = np.diff(np.unique(np.round(X[:, j], 9)))
        out[j] = float(np.clip(np.median(gaps) if len(gaps) else 1.0, 0.02, 0.5))
    return out


def _lbfgs(obj_func: Any, initial_theta: np.ndarray, bounds: np.ndarray) -> tuple[np.ndarray, float]:
    """scikit-learn's default optimizer with an iteration cap: the marginal likelihood is flat
    along irrelevant length scales, where the default spends a hundred iterations for nothing."""
    from scipy.optimize import minimize

    found = minimize(obj_func, initial_theta, method="L-BFGS-B", jac=True, bounds=bounds,
                     options={"maxiter": MAX_ITER})
    return found.x, float(found.fun)


def fit_model(encoder: Encoder, params: Sequence[dict[str, Any]], values: Sequence[float],
              seed: int = 0, restarts: int = 0) -> BoundaryModel:
    """Fit the GP to complete trials (``params``, first-objective ``values``); seeded."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

    X = encoder.encode(params)
    y = np.asarray(values, dtype=float)
    y_mean, y_std = float(y.mean()), float(y.std())
    y_std = y_std if y_std > 1e-12 else 1.0
    floors = _floors(X, encoder.categorical)
    bounds = np.stack([floors, np.full_like(floors, LENGTH_SCALE_MAX)], axis=1)
    kernel = (ConstantKernel(1.0, (1e-2, 1e2))
              * Matern(length_scale=np.maximum(floors, 0.3), length_scale_bounds=bounds, nu=2.5)
              + WhiteKernel(0.05, (1e-6, 1.0)))
    gp = GaussianProcessRegressor(kernel=kernel, normalize_y=False, optimizer=_lbfgs,
                                  n_restarts_optimizer=restarts,
                                  random_state=np.random.RandomState(seed % (2**32)))
    # one BLAS thread: on matrices this small, threads cost 50x (and cores train the model)
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore", ConvergenceWarning)  # a bound reached is the floor's job
        gp.fit(X, (y - y_mean) / y_std)
    return BoundaryModel(encoder, gp, y_mean, y_std, X)


# ---------------------------------------------------------------------------------------------
# The study's observations and level


def observations(study: optuna.Study, distributions: dict[str, BaseDistribution],
                 trials: Sequence[FrozenTrial] | None = None
                 ) -> tuple[list[dict[str, Any]], list[float]]:
    """Params and first-objective values of the complete trials on the behavior (``train_on``
    chosen or unset, as :func:`study.plots.behavior_trials`) that have every swept parameter."""
    if trials is None:
        trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    params, values = [], []
    for t in trials:
        if t.state != TrialState.COMPLETE or not t.values or t.user_attrs.get("train_on") not in (
                None, "chosen"):
            continue
        v = t.values[0]
        if v is None or not math.isfinite(v) or any(n not in t.params for n in distributions):
            continue
        params.append({n: t.params[n] for n in distributions})
        values.append(float(v))
    return params, values


def level_of(study: optuna.Study, model: BoundaryModel, level: float | None = None
             ) -> tuple[float, str]:
    """The boundary level: the user's, else half-way between base and the fitted ceiling."""
    from study.plots import boundary_level

    fitted, _ = model.predict(model.X)
    return boundary_level(study, level, fitted=fitted.tolist())


def study_distributions(study: optuna.Study) -> dict[str, BaseDistribution]:
    """The swept dimensions: the study's search space (``shiftsweep sweep`` stores it), else the
    distributions its complete trials used."""
    data = study.user_attrs.get("search_space")
    if isinstance(data, dict):
        from search_spaces import SearchSpace

        try:
            return SearchSpace.from_dict(data, source=f"study {study.study_name}").distributions()
        except Exception:  # an old or foreign attribute: fall back to the trials
            pass
    out: dict[str, BaseDistribution] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        for n, d in t.distributions.items():
            out.setdefault(n, d)
    return {n: d for n, d in out.items() if not d.single()}


# ---------------------------------------------------------------------------------------------
# The boundary estimate (plots, stopping)


@dataclass
class BoundaryEstimate:
    """The current boundary: model, level, and the share of the space still undecided."""

    model: BoundaryModel
    level: float
    how: str
    undecided: float  # share of the space where |mean - level| < BAND_Z * sd
    n_trials: int

    def classify(self, X: np.ndarray) -> np.ndarray:
        """True where the model's mean is above the level (model inputs ``X``)."""
        return self.model.predict(X)[0] > self.level

    def plane(self, x_key: str, y_key: str, gx: np.ndarray, gy: np.ndarray, n_other: int = 16,
              seed: int = 0) -> tuple[np.ndarray, np.ndarray] | None:
        """Mean and sd on a grid of a plane (log10 coordinates ``gx`` x ``gy``; rows y), averaged
        over the other dimensions (``n_other`` Sobol points of them): the boundary a plot draws.

        ``x_key`` may be ``n_eff``: then n_real and m range over the pairs with that product.
        None when a plane axis is not a swept dimension.
        """
        enc = self.model.encoder
        dims = enc.distributions
        neff = x_key == "n_eff"
        axes = {"n_real", "dream_multiplier", y_key} if neff else {x_key, y_key}
        if not axes <= set(dims):
            return None
        from scipy.stats import qmc

        others = [n for n in enc.names if n not in axes]
        k = len(others) + (1 if neff else 0)  # n_eff: one more coordinate, the n_real share
        unit = qmc.Sobol(max(k, 1), scramble=True, seed=seed).random(n_other)
        GX, GY = np.meshgrid(10.0 ** gx, 10.0 ** gy)
        cells = GX.size
        cols: dict[str, np.ndarray] = {}
        full = np.zeros((n_other, len(enc.names)))
        for j, name in enumerate(others):
            full[:, enc.names.index(name)] = unit[:, j]
        other_params = enc.decode(full)
        for name in others:
            cols[name] = np.repeat([p[name] for p in other_params], cells)
        cols[y_key] = np.tile(GY.ravel(), n_other)
        if neff:
            nr, m = dims["n_real"], dims["dream_multiplier"]
            n_eff = np.tile(GX.ravel(), n_other)
            lo = np.log(np.clip(np.maximum(nr.low, n_eff / m.high), nr.low, nr.high))
            hi = np.log(np.clip(np.minimum(nr.high, n_eff / m.low), nr.low, nr.high))
            share = np.repeat(unit[:, -1], cells)
            n_real = np.exp(lo + share * np.maximum(hi - lo, 0.0))
            cols["n_real"] = n_real
            cols["dream_multiplier"] = np.clip(n_eff / n_real, m.low, m.high)
        else:
            cols[x_key] = np.tile(GX.ravel(), n_other)
        mu, sd = self.model.predict(enc.encode_columns(cols))
        mu = mu.reshape(n_other, cells).mean(0).reshape(GX.shape)
        sd = np.sqrt((sd.reshape(n_other, cells) ** 2).mean(0)).reshape(GX.shape)
        return mu, sd


def undecided_share(model: BoundaryModel, level: float, seed: int = 0,
                    n: int = N_REFERENCE) -> float:
    ref = model.encoder.encode(model.encoder.sobol(n, seed))
    mu, sd = model.predict(ref)
    return float(np.mean(np.abs(mu - level) < BAND_Z * sd))


def estimate(study: optuna.Study, level: float | None = None, seed: int = 0,
             distributions: dict[str, BaseDistribution] | None = None) -> BoundaryEstimate | None:
    """The study's current boundary from its complete trials on the behavior, or None when
    there are fewer than 3 of them (or nothing is swept). Read-only."""
    distributions = distributions if distributions is not None else study_distributions(study)
    if not distributions:
        return None
    params, values = observations(study, distributions)
    if len({tuple(sorted(map(str, p.items()))) for p in params}) < 3:
        return None
    with threadpool_limits(1):
        model = fit_model(Encoder(distributions), params, values, seed=seed)
        value, how = level_of(study, model, level)
        share = undecided_share(model, value, seed)
    return BoundaryEstimate(model, value, how, share, len(values))


# ---------------------------------------------------------------------------------------------
# Stopping

_SETTLED_CACHE: dict[tuple[str, int], float | None] = {}
_CACHE_LOCK = threading.Lock()


def settled_fraction(space: Any) -> float | None:
    """The undecided share below which ``space`` stops (``stop_when``), or None."""
    stop = getattr(space, "stop_when", None) or {}
    return stop.get("boundary_settled") if isinstance(stop, dict) else None


def undecided_now(study: optuna.Study, space: Any = None) -> float | None:
    """The undecided share of the study's current boundary (cached per complete-trial count),
    or None before the model can be fitted or when the space has no ``stop_when``."""
    if space is None:
        space = _space_of(study)
    if space is None or settled_fraction(space) is None:
        return None
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    key = (f"{id(study._storage)}:{study.study_name}", len(trials))
    with _CACHE_LOCK:
        if key in _SETTLED_CACHE:
            return _SETTLED_CACHE[key]
    try:
        found = estimate(study, seed=int(space.sampler.get("seed", 0)),
                         distributions=space.distributions())
    except Exception:  # a model that cannot be fitted must never stop or break a sweep
        found = None
    share = None if found is None else found.undecided
    with _CACHE_LOCK:
        _SETTLED_CACHE[key] = share
    return share


def boundary_settled(study: optuna.Study, space: Any = None) -> bool:
    """``stop_when: boundary_settled``: True once the undecided share is below the space's
    fraction, after at least the boundary sampler's space-filling start, with no replicate or
    retry still queued (a point's seeds are run before the sweep stops)."""
    if space is None:
        space = _space_of(study)
    fraction = settled_fraction(space) if space is not None else None
    if fraction is None:
        return False
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(done) < n_startup(space.distributions()) * space.seeds_per_point:
        return False
    if study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        return False
    share = undecided_now(study, space)
    return share is not None and share < fraction


def _space_of(study: optuna.Study) -> Any:
    data = study.user_attrs.get("search_space")
    if not isinstance(data, dict):
        return None
    from search_spaces import SearchSpace

    try:
        return SearchSpace.from_dict(data, source=f"study {study.study_name}")
    except Exception:
        return None


# ---------------------------------------------------------------------------------------------
# The acquisition and the sampler


def n_startup(distributions: dict[str, BaseDistribution]) -> int:
    """Default space-filling start: 2 (d + 1) points for d swept dimensions."""
    return 2 * (len(distributions) + 1)


def timse(model: BoundaryModel, level: float, candidates: np.ndarray, reference: np.ndarray
          ) -> np.ndarray:
    """Targeted IMSE reduction of each candidate (Picheny et al. 2010), standardized units:
    sum over reference points z of w(z) cov(z, c)^2 / (var(c) + noise), where w(z) is the
    density of the level under the posterior at z."""
    signal = model.gp.kernel_.k1
    noise = float(model.gp.kernel_.k2.noise_level)
    t = (level - model.y_mean) / model.y_std
    L = model.gp.L_
    Kxr, Kxc = signal(model.X, reference), signal(model.X, candidates)
    Vr = solve_triangular(L, Kxr, lower=True, check_finite=False)
    Vc = solve_triangular(L, Kxc, lower=True, check_finite=False)
    mu_r = Kxr.T @ model.gp.alpha_
    var_r = np.maximum(signal.diag(reference) - np.einsum("ij,ij->j", Vr, Vr), 1e-12)
    var_c = np.maximum(signal.diag(candidates) - np.einsum("ij,ij->j", Vc, Vc), 1e-12)
    s = np.sqrt(var_r + 1e-4)  # a small tolerance: the weight stays finite where var -> 0
    w = stats.norm.pdf((mu_r - t) / s) / s
    cov = signal(reference, candidates) - Vr.T @ Vc
    return (w[:, None] * cov ** 2).sum(0) / (var_c + noise)


def straddle(model: BoundaryModel, level: float, candidates: np.ndarray) -> np.ndarray:
    """Bryan et al. 2005: 1.96 sd - |mean - level| (latent sd, after pending points)."""
    mu, sd = model.predict(candidates)
    return BAND_Z * sd - np.abs(mu - level)


class BoundarySampler(optuna.samplers.BaseSampler):
    """``sampler: boundary``: trials where the level set of the first objective is uncertain.

    The first ``n_startup_trials`` points are the declared space's Sobol sequence
    (:class:`search_spaces.DeclaredSpaceQMC`, which keeps queued replicates and retries off
    it). Then each new point maximises :func:`straddle` (or :func:`timse`) over a seeded Sobol
    candidate set, for the GP fitted to the complete trials, conditioned on the RUNNING trials'
    points (kriging believer). A RUNNING trial whose point is not known yet (it is being
    sampled right now by another worker) is simulated: this trial takes the next point of the
    greedy batch after the points those earlier trials get from the same data. So the sampler
    is deterministic given the seed and the study's trials, and two workers asking at once get
    different points.
    """

    def __init__(self, distributions: dict[str, BaseDistribution], seed: int = 0,
                 n_startup_trials: int | None = None, candidates: int = N_CANDIDATES,
                 reference: int = N_REFERENCE, acquisition: str = "straddle") -> None:
        from search_spaces import DeclaredSpaceQMC

        if acquisition not in ACQUISITIONS:
            raise ValueError(f"acquisition: expected one of {ACQUISITIONS}, got {acquisition!r}")
        self._space = dict(distributions)
        self._seed = int(seed)
        self._encoder = Encoder(self._space)
        self._startup = n_startup(self._space) if n_startup_trials is None else n_startup_trials
        self._n_candidates, self._n_reference = candidates, reference
        self._acquisition = acquisition
        self._qmc = DeclaredSpaceQMC(self._space, seed=seed)
        self._random = optuna.samplers.RandomSampler(seed=seed)

    def reseed_rng(self) -> None:
        self._random.reseed_rng()

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial
                                    ) -> dict[str, BaseDistribution]:
        return dict(self._space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self._random.sample_independent(study, trial, param_name, param_distribution)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        from search_spaces import _takes_a_point

        if not search_space or not _takes_a_point(trial):
            return {}  # a replicate or a retry: its parameters are fixed already
        trials = study._storage.get_all_trials(study._study_id, deepcopy=False)
        earlier = [t for t in trials if t.number < trial.number and _takes_a_point(t)]
        params, values = observations(study, self._space, trials)
        if len(earlier) < self._startup or len({repr(p) for p in params}) < 3:
            return self._qmc.sample_relative(study, trial, search_space)
        with threadpool_limits(1):
            return self.next_point(study, trial, trials, params, values)

    def next_point(self, study: optuna.Study, trial: FrozenTrial, trials: Sequence[FrozenTrial],
                   params: list[dict[str, Any]], values: list[float]) -> dict[str, Any]:
        running = [t for t in trials if t.state == TrialState.RUNNING and t.number != trial.number]
        known = [t for t in running if all(n in t.params for n in self._space)]
        unknown = [t for t in running if t.number < trial.number and t not in known
                   and "fixed_params" not in t.system_attrs]
        step = len(params)  # seeds vary with the data, so a stuck candidate set cannot repeat
        model = fit_model(self._encoder, params, values, seed=self._seed + step)
        level, _ = level_of(study, model)
        cand_params = self._encoder.sobol(self._n_candidates, self._seed * 7919 + step)
        candidates = self._encoder.encode(cand_params)
        reference = (self._encoder.encode(self._encoder.sobol(self._n_reference, self._seed + 1))
                     if self._acquisition == "timse" else None)
        model = model.condition(self._encoder.encode([{n: t.params[n] for n in self._space}
                                                      for t in known]))
        choice = 0
        for _ in range(len(unknown) + 1):
            if self._acquisition == "timse":
                score = timse(model, level, candidates, reference)
            else:
                score = straddle(model, level, candidates)
            choice = int(np.argmax(score))
            model = model.condition(candidates[choice:choice + 1])
        return dict(cand_params[choice])
