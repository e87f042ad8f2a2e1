"""``make bench-boundary``: how many trials each sampler needs to find a known boundary.

Synthetic response surfaces over the listening-cpu space (n_real 1-40 and dream_multiplier 1-10,
both log; for 4-D also lr 1e-4-1e-2, log, and batch_size 4/8/16), each a logistic step of height
1 in a log-scale "dose", observed with Gaussian noise (sd ``NOISE``), boundary level 0.5 (half-way
between the base 0 and the ceiling 1, given as the study's level so every sampler and the scorer
target the same set):

- ``sharp-2d``: dose ln(n_real m), midpoint n_eff 40, width 0.05 (a step);
- ``smooth-2d``: the same dose, width 1.0 (the response is a smooth ramp over the whole range);
- ``dreams-2d``: dose ln(n_real) + 0.5 ln(m), midpoint 12, width 0.3 (a dream is worth less than
  a real example: the boundary is not an n_eff line);
- ``lr-4d``: dose ln(n_real m lr / 1e-3), midpoint 40, width 0.3; batch_size does nothing.

For each surface, sampler (boundary, qmc, random, tpe, grid; all built by
``SearchSpace.make_sampler``, Optuna studies in memory, one worker: ``study.optimize``) and seed,
the trials are run to ``--max-trials``; after the first N trials the same estimator (the GP of
:mod:`study.analysis.boundary`, fitted to those N trials) classifies a fine grid of the space,
and the accuracy is the share of the grid on the same side of 0.5 as the true (noise-free)
surface. So the comparison is about where the trials were put. ``boundary x2`` / ``qmc x2`` run
two workers: two trials are asked (RUNNING at once) before the two are told.

Printed: per surface, the median accuracy over seeds at each N with a 95% bootstrap interval
(``scipy.stats.bootstrap``, percentile), then N98 per sampler (the smallest N at which the median
accuracy reaches 0.98, interpolated between the N measured; "> max" when it never does) and the
ratio boundary / qmc with a bootstrap interval over seeds.

``--acquisitions`` runs only the boundary sampler with its two rules (``straddle``, the default,
and ``timse``) and qmc; ``--samplers a,b --parallel a`` any subset. ``--real`` (part b) runs
the real objective on the tiny random model instead (see :func:`bench_real`).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

NOISE = 0.05
LEVEL = 0.5
CHECKPOINTS = (8, 12, 16, 24, 32, 48, 64, 96, 128)  # those <= --max-trials
SAMPLERS = ("boundary", "qmc", "random", "tpe", "grid")
PARALLEL = ("boundary", "qmc")  # also run with two workers
TARGET = 0.98

DIMS_2D = {"n_real": {"type": "int", "low": 1, "high": 40, "log": True},
           "dream_multiplier": {"type": "int", "low": 1, "high": 10, "log": True}}
DIMS_4D = {**DIMS_2D, "lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
           "batch_size": {"type": "categorical", "values": [4, 8, 16]}}
GRID_POINTS = {2: 10, 4: 4}  # grid sampler: points per dimension (>= --max-trials in all)


@dataclass(frozen=True)
class Surface:
    name: str
    dims: dict[str, Any]
    midpoint: float  # of the dose, in its own units
    width: float
    m_power: float = 1.0  # the dose's exponent of dream_multiplier
    lr: bool = False

    def dose(self, p: dict[str, np.ndarray]) -> np.ndarray:
        d = np.log(p["n_real"]) + self.m_power * np.log(p["dream_multiplier"])
        if self.lr:
            d = d + np.log(np.asarray(p["lr"]) / 1e-3)
        return d

    def truth(self, p: dict[str, np.ndarray]) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(self.dose(p) - math.log(self.midpoint)) / self.width))


SURFACES = (Surface("sharp-2d", DIMS_2D, 40.0, 0.05), Surface("smooth-2d", DIMS_2D, 40.0, 1.0),
            Surface("dreams-2d", DIMS_2D, 12.0, 0.3, m_power=0.5),
            Surface("lr-4d", DIMS_4D, 40.0, 0.3, lr=True))


def make_space(surface: Surface, sampler: str, seed: int, n_trials: int) -> Any:
    from search_spaces import SearchSpace

    opts: dict[str, Any] = {"name": sampler, "seed": seed}
    if sampler in ("straddle", "timse"):  # the boundary sampler with a given acquisition
        opts = {"name": "boundary", "seed": seed, "acquisition": sampler}
    if sampler == "grid":
        opts["points"] = GRID_POINTS[len(surface.dims)]
    return SearchSpace.from_dict({"name": f"bench-{surface.name}", "dimensions": surface.dims,
                                  "fixed": {"behavior": "listening"}, "sampler": opts,
                                  "n_trials": n_trials, "boundary_level": LEVEL},
                                 source="bench-boundary")


def fine_grid(surface: Surface) -> dict[str, np.ndarray]:
    """The scoring grid: 80 x 80 log-spaced points in 2-D, 16 x 16 x 16 x 3 in 4-D (continuous
    n_real and m: the boundary runs between the integers)."""
    n = 80 if len(surface.dims) == 2 else 16
    axes = []
    for spec in surface.dims.values():
        if spec["type"] == "categorical":
            axes.append(np.array(spec["values"], dtype=float))
        else:
            axes.append(np.geomspace(spec["low"], spec["high"], n))
    mesh = np.meshgrid(*axes, indexing="ij")
    return {name: m.ravel() for name, m in zip(surface.dims, mesh, strict=True)}


def run_one(surface: Surface, sampler: str, seed: int, n_trials: int, workers: int
            ) -> list[tuple[dict[str, Any], float]]:
    """One study: the (params, noisy value) of its trials in trial-number order."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    space = make_space(surface, sampler, seed, n_trials)
    study = optuna.create_study(direction="maximize", sampler=space.make_sampler())
    study.set_user_attr("boundary_level", LEVEL)
    study.set_user_attr("objective", ["shift"])
    noise = np.random.default_rng(10_000 + seed)

    def value(params: dict[str, Any]) -> float:
        cols = {k: np.array([v], dtype=float) for k, v in params.items()}
        return float(surface.truth(cols)[0] + NOISE * noise.standard_normal())

    if workers == 1:
        study.optimize(lambda t: value(space.suggest(t)), n_trials=n_trials)
    else:
        while len(study.trials) < n_trials:
            batch = [study.ask() for _ in range(min(workers, n_trials - len(study.trials)))]
            points = [space.suggest(t) for t in batch]  # each sampled while the others RUN
            for t, p in zip(batch, points, strict=True):
                study.tell(t, value(p))
    return [(dict(t.params), float(t.value)) for t in study.trials[:n_trials]]


def accuracies(surface: Surface, trials: list[tuple[dict[str, Any], float]],
               checkpoints: tuple[int, ...]) -> list[float]:
    """Share of the fine grid on the right side of the true boundary, after each checkpoint."""
    from search_spaces import SearchSpace
    from study.analysis.boundary import Encoder, fit_model

    space = SearchSpace.from_dict({"dimensions": surface.dims, "fixed": {"behavior": "listening"}},
                                  source="bench-boundary")
    enc = Encoder(space.distributions())
    grid = fine_grid(surface)
    truth = surface.truth(grid) > LEVEL
    X = enc.encode_columns(grid)
    out = []
    for n in checkpoints:
        params, values = zip(*trials[:n], strict=True)
        model = fit_model(enc, list(params), list(values), seed=0)
        out.append(float(np.mean((model.predict(X)[0] > LEVEL) == truth)))
    return out


def _job(args: tuple[Surface, str, int, int, int, tuple[int, ...]]) -> tuple[str, str, int, list]:
    from threadpoolctl import threadpool_limits

    surface, sampler, seed, n_trials, workers, checkpoints = args
    with threadpool_limits(1):
        trials = run_one(surface, sampler, seed, n_trials, workers)
        acc = accuracies(surface, trials, checkpoints)
    label = sampler if workers == 1 else f"{sampler} x{workers}"
    return surface.name, label, seed, acc


def n_to_target(curve: np.ndarray, checkpoints: tuple[int, ...], target: float = TARGET) -> float:
    """The smallest N where ``curve`` (accuracy at ``checkpoints``) reaches ``target``,
    interpolated linearly between checkpoints; inf when it never does."""
    for i, (n, a) in enumerate(zip(checkpoints, curve, strict=True)):
        if a >= target:
            if i == 0:
                return float(n)
            n0, a0 = checkpoints[i - 1], curve[i - 1]
            return float(n0 + (target - a0) / (a - a0) * (n - n0))
    return math.inf


def _fmt_n(n: float, most: int) -> str:
    return f"> {most}" if math.isinf(n) else f"{n:.1f}"


def report(results: dict[tuple[str, str], np.ndarray], checkpoints: tuple[int, ...],
           seeds: int, out: Any = sys.stdout) -> dict[str, dict[str, float]]:
    """Print the tables; returns per surface {"ratio", "ratio_lo", "ratio_hi", "n98_*"}."""
    from scipy.stats import bootstrap

    summary: dict[str, dict[str, float]] = {}
    most = checkpoints[-1]
    labels = [*SAMPLERS, "straddle", "timse", *(f"{s} x2" for s in (*PARALLEL, "timse"))]
    for surface in SURFACES:
        rows = {lab: results[(surface.name, lab)] for lab in labels if (surface.name, lab) in results}
        print(f"\n## {surface.name}: median accuracy over {seeds} seeds [95% bootstrap interval]",
              file=out)
        print("| N | " + " | ".join(rows) + " |", file=out)
        print("|---|" + "---|" * len(rows), file=out)
        for j, n in enumerate(checkpoints):
            cells = []
            for acc in rows.values():
                col = acc[:, j]
                ci = bootstrap((col,), np.median, n_resamples=999, method="percentile",
                               random_state=0).confidence_interval
                cells.append(f"{np.median(col):.3f} [{ci.low:.3f}, {ci.high:.3f}]")
            print(f"| {n} | " + " | ".join(cells) + " |", file=out)
        n98 = {lab: n_to_target(np.median(acc, axis=0), checkpoints) for lab, acc in rows.items()}
        print("N98 (trials to median accuracy 0.98): "
              + ", ".join(f"{lab} {_fmt_n(v, most)}" for lab, v in n98.items()), file=out)
        entry = {f"n98 {lab}": v for lab, v in n98.items()}

        def ratio(b: np.ndarray, q: np.ndarray) -> float:
            """N98(b) / N98(q); a sampler that never reaches 0.98 counts as N98 = max + 1
            (a bound, said so in the output), and nan when neither does."""
            nb = n_to_target(np.median(b, axis=0), checkpoints)
            nq = n_to_target(np.median(q, axis=0), checkpoints)
            if math.isinf(nb) and math.isinf(nq):
                return math.nan
            return min(nb, most + 1) / min(nq, most + 1)

        for a, b in (("boundary", "qmc"), ("straddle", "qmc"), ("timse", "qmc"),
                     ("boundary x2", "boundary"), ("timse x2", "timse")):
            if a not in rows or b not in rows:
                continue
            r = ratio(rows[a], rows[b])
            # resample the seeds of each sampler (bootstrap draws indices into the rows)
            ci = bootstrap((np.arange(len(rows[a])), np.arange(len(rows[b]))),
                           lambda i, j, ra=rows[a], rb=rows[b]: ratio(ra[i.astype(int)],
                                                                      rb[j.astype(int)]),
                           n_resamples=499, method="percentile", vectorized=False,
                           paired=False, random_state=0).confidence_interval
            note = ""
            if math.isinf(n98[a]) or math.isinf(n98[b]):
                note = (f" (a sampler that never reached 0.98 in {most} trials counts as "
                        f"{most + 1}: a bound)")
            print(f"ratio {a} / {b}: {r:.2f} [{ci.low:.2f}, {ci.high:.2f}]{note}", file=out)
            entry[f"{a} / {b}"] = r
        summary[surface.name] = entry
    return summary


def bench_synthetic(seeds: int, max_trials: int, jobs: int, samplers: tuple[str, ...] = SAMPLERS,
                    parallel: tuple[str, ...] = PARALLEL) -> None:
    checkpoints = tuple(c for c in CHECKPOINTS if c <= max_trials)
    if checkpoints[-1] != max_trials:
        checkpoints = (*checkpoints, max_trials)
    tasks = [(s, smp, seed, max_trials, 1, checkpoints) for s in SURFACES for smp in samplers
             for seed in range(seeds)]
    tasks += [(s, smp, seed, max_trials, 2, checkpoints) for s in SURFACES for smp in parallel
              for seed in range(seeds)]
    started = time.time()
    found: dict[tuple[str, str], dict[int, list[float]]] = {}
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        for name, label, seed, acc in pool.map(_job, tasks, chunksize=1):
            found.setdefault((name, label), {})[seed] = acc
    results = {k: np.array([v[s] for s in sorted(v)]) for k, v in found.items()}
    print(f"# make bench-boundary: {seeds} seeds, up to {max_trials} trials, noise sd {NOISE}, "
          f"level {LEVEL}; {len(tasks)} studies in {time.time() - started:.0f} s on {jobs} process(es)")
    summary = report(results, checkpoints, seeds)
    print("\n## target: boundary N98 <= 0.4 x qmc's on every surface; x2 within 1.2 x one worker")
    for name, entry in summary.items():
        r = entry.get("boundary / qmc", math.nan)
        r2 = entry.get("boundary x2 / boundary", math.nan)
        def verdict(value: float, limit: float) -> str:
            return "undetermined" if math.isnan(value) else "met" if value <= limit else "NOT met"

        print(f"- {name}: boundary/qmc {r:.2f} ({verdict(r, 0.4)}); "
              f"two workers / one {r2:.2f} ({verdict(r2, 1.2)})")


REAL_SAMPLERS = ("boundary", "qmc")


def bench_real(trials: int, out: Any = sys.stdout) -> None:
    """Part (b): the real objective (``shift``) of the ``smoke`` space (a 2-layer random model,
    real ``shiftsweep sweep`` launches, trained and scored), one study per sampler, seed 0.

    There is no true boundary here, so the reference is the boundary model fitted to the trials
    of all studies pooled, at its implicit level; each sampler's accuracy after N of its own
    trials is the share of 4096 Sobol points of the space it classifies as the reference does.
    One seed (each trial is a real fine-tune on this 2-core machine): a measurement of where the
    trials went on a real, noisy objective, not a median with an interval.
    """
    import subprocess
    import tempfile
    from pathlib import Path

    import optuna
    import yaml

    import storage
    from search_spaces import load_space
    from study.analysis.boundary import Encoder, fit_model, level_of, observations

    base = load_space("smoke")
    work = Path(tempfile.mkdtemp(prefix="bench-boundary-real-"))
    url = f"sqlite:///{work / 'real.db'}"
    studies, walls = {}, {}
    for sampler in REAL_SAMPLERS:
        data = {**base.to_dict(), "sampler": {"name": sampler, "seed": 0}, "n_trials": trials}
        data.pop("name")
        path = work / f"{sampler}.yaml"
        path.write_text(yaml.safe_dump(data))
        started = time.time()
        done = subprocess.run([sys.executable, "-m", "study.cli", "sweep", "--space", str(path),
                               "--study", f"real-{sampler}", "--storage", url, "--artifacts",
                               str(work / "artifacts"), "--no-progress"],
                              capture_output=True, text=True)
        walls[sampler] = time.time() - started
        if done.returncode != 0:
            raise SystemExit(f"bench-boundary --real: the {sampler} sweep failed:\n"
                             f"{done.stderr[-3000:]}")
        studies[sampler] = optuna.load_study(study_name=f"real-{sampler}",
                                             storage=storage.open_storage(url))
    dists = base.distributions()
    enc = Encoder(dists)
    pooled = [observations(s, dists) for s in studies.values()]
    params = [p for ps, _ in pooled for p in ps]
    values = [v for _, vs in pooled for v in vs]
    ref_model = fit_model(enc, params, values)
    level, how = level_of(studies["qmc"], ref_model)
    X = enc.encode(enc.sobol(4096, 12345))
    reference = ref_model.predict(X)[0] > level
    print(f"# bench-boundary --real: smoke space (tiny random model), {trials} trials per sampler, "
          f"seed 0; reference: GP over all {len(values)} trials, level {level:.4g} ({how}); "
          f"reference share above the level {reference.mean():.2f}", file=out)
    print("| N | " + " | ".join(REAL_SAMPLERS) + " |", file=out)
    print("|---|" + "---|" * len(REAL_SAMPLERS), file=out)
    own = {name: observations(s, dists) for name, s in studies.items()}
    for n in range(4, trials + 1, 2):
        cells = []
        for name in REAL_SAMPLERS:
            ps, vs = own[name]
            model = fit_model(enc, ps[:n], vs[:n])
            cells.append(f"{np.mean((model.predict(X)[0] > level) == reference):.3f}")
        print(f"| {n} | " + " | ".join(cells) + " |", file=out)
    print("sweep wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in walls.items())
          + f"; noise sd fitted by the reference model {ref_model.noise_sd:.3g}, "
          f"value range {min(values):.3g} .. {max(values):.3g}", file=out)


def main(argv: list[str] | None = None) -> int:
    # one BLAS thread per process, set before scipy loads OpenBLAS (the processes inherit it)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    parser = argparse.ArgumentParser(prog="python -m study.bench_boundary")
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--max-trials", type=int, default=64)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--real", action="store_true", help="the real objective, tiny model")
    parser.add_argument("--real-trials", type=int, default=12)
    parser.add_argument("--acquisitions", action="store_true",
                        help="only the boundary sampler's two rules, straddle and timse, vs qmc")
    parser.add_argument("--samplers", default=None,
                        help="comma-separated one-worker samplers (boundary, qmc, random, tpe, "
                             "grid; straddle, timse: the boundary sampler with that rule)")
    parser.add_argument("--parallel", default="",
                        help="with --samplers: comma-separated samplers also run by two workers")
    args = parser.parse_args(argv)
    if args.seeds < 2:
        raise SystemExit("--seeds: expected at least 2 (a median with an interval)")
    if args.real:
        bench_real(args.real_trials)
        return 0
    if args.samplers:
        bench_synthetic(args.seeds, args.max_trials, args.jobs, tuple(args.samplers.split(",")),
                        tuple(p for p in args.parallel.split(",") if p))
    elif args.acquisitions:
        bench_synthetic(args.seeds, args.max_trials, args.jobs, ("straddle", "timse", "qmc"), ())
    else:
        bench_synthetic(args.seeds, args.max_trials, args.jobs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
