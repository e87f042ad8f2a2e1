"""Search spaces as data: ``search_spaces/*.yaml`` -> Optuna distributions and trial configs.

A space file declares::

    description: one line saying what is swept
    dimensions:            # each a TrialConfig field
      n_real: {type: int, low: 1, high: 40, log: true}
      dream_multiplier: {type: int, low: 1, high: 10, log: true}
      lr: {type: float, low: 3.0e-4, high: 1.0e-2, log: true}
      batch_size: {type: categorical, values: [4, 8, 16]}
    fixed: {behavior: listening, epochs: 1, seed: 0}   # every other TrialConfig setting
    sampler: {name: qmc, seed: 0}                       # qmc (Sobol) | tpe | random | gp | grid
    n_trials: 16           # trials, replicates included: a multiple of seeds_per_point
    seeds_per_point: 1     # optional: K trials per sampled point, seeds s..s+K-1 (s = fixed.seed)
    objective: shift       # a measure of objectives.measures, or two: [shift, forgetting]
    boundary_level: null   # optional: the level of the boundary (default: half-way)

With ``seeds_per_point: K > 1`` every point the sampler proposes runs as K Optuna trials with
the same parameters and seeds s, s+1, ..., s+K-1 (``study.sweep_worker.trial_config`` does it),
so seed-to-seed noise is measured at every point; ``seed`` may then not be a dimension.

:func:`load_space` is the one loader: every problem is one :class:`UserError` naming the
file and the key. A study keeps the loaded space in its user attributes, so a worker that
joins from another machine needs only the study's name and storage.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import threading
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml

from objectives.config import TrialConfig
from objectives.errors import UserError, read_text
from objectives.measures import OBJECTIVES  # measures a study may optimize, with their direction

HERE = Path(__file__).resolve().parent
DEFAULT_SPACE = "listening-cpu"

SAMPLERS = ("qmc", "tpe", "random", "gp", "grid")
SAMPLER_OPTIONS = {  # option -> (type, meaning)
    "qmc": {"seed": int, "scramble": bool},
    "tpe": {"seed": int, "n_startup_trials": int},
    "random": {"seed": int},
    "gp": {"seed": int, "n_startup_trials": int},
    "grid": {"seed": int, "points": int},
}
TOP_KEYS = ("description", "dimensions", "fixed", "sampler", "n_trials", "seeds_per_point",
            "objective", "boundary_level")
DIMENSION_KEYS = {"int": {"type", "low", "high", "log", "step"},
                  "float": {"type", "low", "high", "log", "step"},
                  "categorical": {"type", "values"}}


@dataclass(frozen=True)
class Dimension:
    """One swept setting: ``int``/``float`` with low, high, log, step; or ``categorical``."""

    name: str
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    values: tuple[Any, ...] = ()

    def distribution(self) -> Any:
        d = optuna.distributions
        if self.type == "categorical":
            return d.CategoricalDistribution(list(self.values))
        if self.type == "int":
            return d.IntDistribution(int(self.low), int(self.high), log=self.log,
                                     step=int(self.step or 1))
        return d.FloatDistribution(float(self.low), float(self.high), log=self.log, step=self.step)

    def grid(self, points: int) -> list[Any]:
        """Values of this dimension on a grid (log-spaced for log dimensions)."""
        if self.type == "categorical":
            return list(self.values)
        low, high = float(self.low), float(self.high)  # type: ignore[arg-type]
        if self.step is not None and not self.log:
            count = round((high - low) / self.step) + 1
            picks = sorted({round(i * (count - 1) / max(points - 1, 1)) for i in range(points)})
            raw = [low + i * self.step for i in picks]
        elif self.log:
            raw = [math.exp(math.log(low) + i * (math.log(high) - math.log(low)) / max(points - 1, 1))
                   for i in range(points)]
        else:
            raw = [low + i * (high - low) / max(points - 1, 1) for i in range(points)]
        if self.type == "int":
            return sorted({round(v) for v in raw})
        return [float(f"{v:.6g}") for v in raw]


@dataclass
class SearchSpace:
    """A loaded, validated search space."""

    name: str
    source: str
    dimensions: dict[str, Dimension]
    fixed: dict[str, Any] = field(default_factory=dict)
    sampler: dict[str, Any] = field(default_factory=lambda: {"name": "qmc", "seed": 0})
    n_trials: int = 16
    objective: list[str] = field(default_factory=lambda: ["shift"])
    boundary_level: float | None = None
    description: str = ""
    seeds_per_point: int = 1  # K: trials per sampled point, seeds base_seed .. base_seed + K - 1

    @property
    def base_seed(self) -> int:
        """The seed of a point's first trial: the fixed ``seed`` (TrialConfig's default if unset)."""
        return int(self.fixed.get("seed", TrialConfig.seed))

    @property
    def n_points(self) -> int:
        """Sampled points in a study of ``n_trials`` trials."""
        return self.n_trials // self.seeds_per_point

    # --- Optuna ---------------------------------------------------------------------------------
    def distributions(self) -> dict[str, Any]:
        return {name: dim.distribution() for name, dim in self.dimensions.items()}

    @property
    def directions(self) -> list[str]:
        return [OBJECTIVES[name] for name in self.objective]

    def make_sampler(self) -> Any:
        """The sampler, built the same way by every worker.

        Grid and QMC share the space's seed: every worker indexes one design, and a trial's
        point is its rank among the study's trials. TPE, random and GP reseed their random
        state from the space's seed and the trial number before each trial
        (:func:`sampler_seed`): trial numbers are unique, so two workers never draw from the
        same state (with one shared seed they proposed the same points), and a one-worker
        sweep is reproducible.
        """
        opts = dict(self.sampler)
        name = opts.pop("name")
        seed = opts.pop("seed", 0)
        if name == "qmc":
            return DeclaredSpaceQMC(self.distributions(), seed=seed,
                                    scramble=opts.get("scramble", True))
        if name == "tpe":
            return PerTrialSeedTPE(seed=seed, **opts)
        if name == "random":
            return PerTrialSeedRandom(seed=seed)
        if name == "gp":
            return PerTrialSeedGP(seed=seed, **opts)
        points = opts.get("points", 4)
        return ReplicateAwareGrid(
            {n: d.grid(points) for n, d in self.dimensions.items()}, seed=seed)

    def sampler_seed(self, trial_number: int) -> int:
        """The seed the sampler used for trial ``trial_number`` (recorded on every trial)."""
        seed = int(self.sampler.get("seed", 0))
        if self.sampler["name"] in SHARED_SEED_SAMPLERS:
            return seed
        return sampler_seed(seed, trial_number)

    def suggest(self, trial: Any) -> dict[str, Any]:
        """Ask ``trial`` for a value of every dimension."""
        params: dict[str, Any] = {}
        for name, dim in self.dimensions.items():
            if dim.type == "categorical":
                params[name] = trial.suggest_categorical(name, list(dim.values))
            elif dim.type == "int":
                params[name] = trial.suggest_int(name, int(dim.low), int(dim.high), log=dim.log,
                                                 step=int(dim.step or 1))
            else:
                params[name] = trial.suggest_float(name, float(dim.low), float(dim.high),
                                                   log=dim.log, step=dim.step)
        return params

    def config(self, params: dict[str, Any]) -> TrialConfig:
        """The trial config of one point: the fixed settings plus the sampled values."""
        return TrialConfig.from_dict({**self.fixed, **params}, source=f"{self.source}")

    def corners(self) -> list[TrialConfig]:
        """The configs at the low and the high end of every dimension (first and last value
        of a categorical one): what a sweep checks before it starts."""
        configs = []
        for end in (0, -1):
            point = {}
            for n, d in self.dimensions.items():
                if d.type == "categorical":
                    point[n] = d.values[end]
                else:
                    value = d.low if end == 0 else d.high
                    point[n] = int(value) if d.type == "int" else float(value)
            configs.append(self.config(point))
        return configs

    # --- identity and storage -----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description,
                "dimensions": {n: _dim_dict(d) for n, d in self.dimensions.items()},
                "fixed": self.fixed, "sampler": self.sampler, "n_trials": self.n_trials,
                "seeds_per_point": self.seeds_per_point,
                "objective": self.objective, "boundary_level": self.boundary_level}

    def fingerprint(self) -> str:
        """What makes two studies comparable: all but the trial count and the level.

        ``seeds_per_point`` is part of it (K seeds per point is a different design), except at
        its default 1, so that studies made before the key existed keep their fingerprint.
        """
        data = self.to_dict()
        for key in ("name", "description", "n_trials", "boundary_level"):
            data.pop(key)
        if data["seeds_per_point"] == 1:
            data.pop("seeds_per_point")
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str) -> SearchSpace:
        return _parse(data, name=str(data.get("name", "study")), source=source)

    def describe(self) -> str:
        """Markdown: what is swept (the dashboard's study note)."""
        lines = [f"**{self.name}**: {self.description}".rstrip(": "), "",
                 "| dimension | range |", "|---|---|"]
        for name, dim in self.dimensions.items():
            if dim.type == "categorical":
                rng = ", ".join(map(str, dim.values))
            else:
                rng = f"{dim.low:g} – {dim.high:g}" + (" (log)" if dim.log else "")
                rng += f", step {dim.step:g}" if dim.step else ""
            lines.append(f"| `{name}` | {rng} |")
        fixed = ", ".join(f"`{k}={v}`" for k, v in self.fixed.items())
        k, s = self.seeds_per_point, self.base_seed
        trials = (f"{self.n_trials} ({self.n_points} points × {k} seeds, `seed` {s}–{s + k - 1} "
                  f"at every point)" if k > 1 else f"{self.n_trials}")
        lines += ["", f"Fixed: {fixed or 'defaults'}.",
                  f"Sampler: `{self.sampler['name']}` (seed {self.sampler.get('seed', 0)}). "
                  f"Objective: {' and '.join(f'`{o}` ({OBJECTIVES[o]})' for o in self.objective)}. "
                  f"Trials: {trials}."]
        return "\n".join(lines)


class DeclaredSpaceQMC(optuna.samplers.QMCSampler):
    """Sobol sampling of the declared space from the first trial on.

    Optuna's QMCSampler infers its space from the first trial, which it samples at random;
    here the space is declared, so every trial, the first included, is a QMC point.

    Which Sobol point a trial gets: Optuna counts samples in a study attribute (read, then
    written: two workers sampling at once can get the same point). Here a trial's point is
    its rank among the study's sampled trials, from the trial numbers the storage hands out
    atomically: queued trials (a point's replicates, which fix every parameter) and retries
    (which reuse their original's parameters) take no point, and a retry that must sample
    gets its original's. Without concurrency and queued trials this is Optuna's sequence.
    """

    def __init__(self, space: dict[str, Any], seed: int, scramble: bool = True) -> None:
        super().__init__(qmc_type="sobol", seed=seed, scramble=scramble,
                         warn_independent_sampling=False)
        self._space = dict(space)
        self._sampling = threading.local()  # the trial being sampled, for _find_sample_id

    def infer_relative_search_space(self, study: Any, trial: Any) -> dict[str, Any]:
        return dict(self._space)

    def sample_relative(self, study: Any, trial: Any, search_space: dict[str, Any]) -> dict[str, Any]:
        self._sampling.trial = trial
        try:
            return super().sample_relative(study, trial, search_space)
        finally:
            self._sampling.trial = None

    def _find_sample_id(self, study: Any, search_space: dict[str, Any]) -> int:
        trial = getattr(self._sampling, "trial", None)
        if trial is None:  # not reached through sample_relative: Optuna's own counter
            return super()._find_sample_id(study, search_space)
        number = trial.system_attrs.get("failed_trial", trial.number)
        return sum(1 for t in study._storage.get_all_trials(study._study_id, deepcopy=False)
                   if t.number < number and _takes_a_point(t))


SHARED_SEED_SAMPLERS = ("qmc", "grid")  # one design that every worker indexes


def sampler_seed(seed: int, trial_number: int) -> int:
    """A seed for trial ``trial_number`` of a sampler seeded ``seed`` (32 bits of a hash)."""
    digest = hashlib.sha256(f"shiftsweep-sampler:{seed}:{trial_number}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


class _PerTrialSeed:
    """Reseed an Optuna sampler's random state before each trial from (seed, trial number).

    Optuna's samplers keep one random state per process; workers built with the same seed
    walk the same sequence and propose the same points. The trial number is unique in a study
    (the storage hands it out), so reseeding from it gives every trial its own stream.
    """

    _base_seed: int

    def before_trial(self, study: Any, trial: Any) -> None:
        super().before_trial(study, trial)  # type: ignore[misc]
        seed = sampler_seed(self._base_seed, trial.number)
        for part in (self, getattr(self, "_random_sampler", None),
                     getattr(self, "_independent_sampler", None)):
            state = getattr(part, "_rng", None)
            if state is not None:
                state.rng.seed(seed)


class PerTrialSeedTPE(_PerTrialSeed, optuna.samplers.TPESampler):
    def __init__(self, seed: int, **options: Any) -> None:
        super().__init__(seed=seed, **options)
        self._base_seed = seed


class PerTrialSeedRandom(_PerTrialSeed, optuna.samplers.RandomSampler):
    def __init__(self, seed: int) -> None:
        super().__init__(seed=seed)
        self._base_seed = seed


class PerTrialSeedGP(_PerTrialSeed, optuna.samplers.GPSampler):
    def __init__(self, seed: int, **options: Any) -> None:
        super().__init__(seed=seed, **options)
        self._base_seed = seed


def _takes_a_point(trial: Any) -> bool:
    """Whether a trial was sampled (not queued with fixed parameters, not a retry)."""
    return "fixed_params" not in trial.system_attrs and "failed_trial" not in trial.system_attrs


class ReplicateAwareGrid(optuna.samplers.GridSampler):
    """Optuna's grid sampler, safe with queued trials (a point's replicates, retries).

    Optuna's ``after_trial`` stops the study once every grid point has been run, which would
    leave the last point's replicates queued, and it reads the ``grid_id`` of the finished
    trial, which a queued trial with fixed parameters has none of (a KeyError). Here a
    queued trial runs before the grid may stop the study; a trial without a grid point stops
    it only when the grid is exhausted. Queued trials never take a grid point (Optuna's
    ``before_trial`` skips trials with fixed parameters), so distinct points stay distinct.
    """

    def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
        from optuna.trial import TrialState

        if study._storage.get_all_trials(study._study_id, deepcopy=False,
                                         states=(TrialState.WAITING,)):
            return
        if "grid_id" not in study._storage.get_trial_system_attrs(trial._trial_id):
            if not self._get_unvisited_grid_ids(study):
                study.stop()
            return
        super().after_trial(study, trial, state, values)


def _dim_dict(dim: Dimension) -> dict[str, Any]:
    if dim.type == "categorical":
        return {"type": "categorical", "values": list(dim.values)}
    out: dict[str, Any] = {"type": dim.type, "low": dim.low, "high": dim.high, "log": dim.log}
    if dim.step is not None:
        out["step"] = dim.step
    return out


def space_path(spec: str | Path) -> Path:
    """A shipped space's name (``listening-cpu``) or a path to a YAML file."""
    path = Path(spec)
    if path.suffix not in (".yaml", ".yml"):
        shipped = HERE / f"{spec}.yaml"
        if shipped.exists():
            return shipped
        names = ", ".join(shipped_spaces())
        raise UserError(f"--space {spec}: no such file, and not a shipped space ({names})")
    if not path.exists():
        raise UserError(f"--space {spec}: no such file")
    return path


def shipped_spaces() -> list[str]:
    return sorted(p.stem for p in HERE.glob("*.yaml"))


def load_space(spec: str | Path) -> SearchSpace:
    """Load and validate a search-space file; any problem is one UserError naming the key."""
    path = space_path(spec)
    try:
        data = yaml.safe_load(read_text(path))
    except yaml.YAMLError as err:
        raise UserError(f"{path}: not valid YAML ({err})".replace("\n", " ")) from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping with keys {', '.join(TOP_KEYS)}")
    return _parse(data, name=path.stem, source=str(path))


def _parse(data: dict[str, Any], name: str, source: str) -> SearchSpace:
    def fail(key: str, expected: str, got: Any = dataclasses.MISSING) -> typing.NoReturn:
        tail = "" if got is dataclasses.MISSING else f", got {got!r}"
        raise UserError(f"{source}: {key}: expected {expected}{tail}")

    data = {k: v for k, v in data.items() if k != "name"}
    for key in data:
        if key not in TOP_KEYS:
            fail(key, f"one of the keys {', '.join(TOP_KEYS)} (unknown key)")
    fields = {f.name for f in dataclasses.fields(TrialConfig)}
    hints = typing.get_type_hints(TrialConfig)

    raw_dims = data.get("dimensions")
    if not isinstance(raw_dims, dict) or not raw_dims:
        fail("dimensions", "a mapping of at least one setting to its range", raw_dims)
    dims: dict[str, Dimension] = {}
    for dname, spec in raw_dims.items():
        key = f"dimensions.{dname}"
        if dname not in fields:
            fail(key, f"a trial setting ({', '.join(sorted(fields))})")
        if not isinstance(spec, dict):
            fail(key, "a mapping such as {type: int, low: 1, high: 40, log: true}", spec)
        kind = spec.get("type")
        if kind not in DIMENSION_KEYS:
            fail(f"{key}.type", "int, float or categorical", kind)
        for sub in spec:
            if sub not in DIMENSION_KEYS[kind]:
                fail(f"{key}.{sub}", f"one of {', '.join(sorted(DIMENSION_KEYS[kind]))} "
                     f"for a {kind} dimension (unknown key)")
        if kind == "categorical":
            values = spec.get("values")
            if not isinstance(values, list) or not values:
                fail(f"{key}.values", "a non-empty list", values)
            if len({json.dumps(v) for v in values}) != len(values):
                fail(f"{key}.values", "distinct values", values)
            dims[dname] = Dimension(dname, "categorical", values=tuple(values))
            continue
        number = int if kind == "int" else (int, float)
        for bound in ("low", "high"):
            value = spec.get(bound)
            if isinstance(value, bool) or not isinstance(value, number) or not math.isfinite(value):
                fail(f"{key}.{bound}", f"{'an integer' if kind == 'int' else 'a finite number'}",
                     value)
        low, high = spec["low"], spec["high"]
        if low > high:
            fail(f"{key}.low", f"low <= high ({high})", low)
        log = spec.get("log", False)
        if not isinstance(log, bool):
            fail(f"{key}.log", "true or false", log)
        if log and low <= 0:
            fail(f"{key}.low", "a value > 0 for a log dimension", low)
        step = spec.get("step")
        if step is not None:
            if (isinstance(step, bool) or not isinstance(step, number) or not math.isfinite(step)
                    or step <= 0):
                fail(f"{key}.step", "a finite number > 0", step)
            if log:
                fail(f"{key}.step", "no step on a log dimension (Optuna allows one or the other)")
        if kind == "int" and hints[dname] is not int:
            fail(key, f"a type matching the setting ({_hint_name(hints[dname])}), not int")
        if kind == "float" and hints[dname] is not float:
            fail(key, f"a type matching the setting ({_hint_name(hints[dname])}), not float")
        dims[dname] = Dimension(dname, kind, low=low, high=high, log=log, step=step)

    fixed = data.get("fixed") or {}
    if not isinstance(fixed, dict):
        fail("fixed", "a mapping of trial settings", fixed)
    for fname in fixed:
        if fname not in fields:
            fail(f"fixed.{fname}", f"a trial setting ({', '.join(sorted(fields))})")
        if fname in dims:
            fail(f"fixed.{fname}", "a setting that is not also a dimension")

    sampler = data.get("sampler", {"name": "qmc"})
    if isinstance(sampler, str):
        sampler = {"name": sampler}
    if not isinstance(sampler, dict) or sampler.get("name") not in SAMPLERS:
        fail("sampler.name", f"one of {', '.join(SAMPLERS)}",
             sampler.get("name") if isinstance(sampler, dict) else sampler)
    sampler = dict(sampler)
    for opt, value in sampler.items():
        if opt == "name":
            continue
        kind = SAMPLER_OPTIONS[sampler["name"]].get(opt)
        if kind is None:
            fail(f"sampler.{opt}", f"an option of {sampler['name']} "
                 f"({', '.join(SAMPLER_OPTIONS[sampler['name']])})")
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            fail(f"sampler.{opt}", kind.__name__, value)
    sampler.setdefault("seed", 0)

    n_trials = data.get("n_trials", 16)
    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
        fail("n_trials", "an integer >= 1", n_trials)

    seeds = data.get("seeds_per_point", 1)
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        fail("seeds_per_point", "an integer >= 1", seeds)
    if seeds > 1 and "seed" in dims:
        # The replicates' seeds come from fixed.seed; a seed dimension would fight them.
        fail("dimensions.seed", f"no seed dimension with seeds_per_point {seeds} (every point "
             f"runs seeds s..s+{seeds - 1}, s = fixed.seed); drop one of the two")
    if n_trials % seeds:
        fail("n_trials", f"a multiple of seeds_per_point {seeds} (trials count replicates; "
             f"{n_trials // seeds * seeds or seeds} or {(n_trials // seeds + 1) * seeds})", n_trials)

    objective = data.get("objective", "shift")
    objective = [objective] if isinstance(objective, str) else objective
    if (not isinstance(objective, list) or not 1 <= len(objective) <= 2
            or any(o not in OBJECTIVES for o in objective) or len(set(objective)) != len(objective)):
        fail("objective", f"one measure or a list of two ({', '.join(OBJECTIVES)})",
             data.get("objective"))

    level = data.get("boundary_level")
    if level is not None and (isinstance(level, bool) or not isinstance(level, int | float)
                              or not math.isfinite(level)):
        fail("boundary_level", "a finite number or null", level)

    description = data.get("description", "")
    if not isinstance(description, str):
        fail("description", "a string", description)

    space = SearchSpace(name=name, source=source, dimensions=dims, fixed=dict(fixed),
                        sampler=sampler, n_trials=n_trials, objective=list(objective),
                        boundary_level=None if level is None else float(level),
                        description=description.strip(), seeds_per_point=seeds)
    try:  # the fixed settings and both corners must make valid trial configs
        space.corners()
    except UserError as err:  # a range check names only the setting: say where it came from
        message = str(err)
        raise UserError(message if message.startswith(source) else f"{source}: {message}") \
            from None
    return space


def _hint_name(hint: Any) -> str:
    return getattr(hint, "__name__", str(hint))
