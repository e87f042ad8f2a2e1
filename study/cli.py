"""``shiftsweep``: the command line.

    shiftsweep sweep [--space listening-cpu] [--trials N] [--workers N] [--gpus 0,1,2,3]
    shiftsweep worker --study NAME --storage URL   # join a running study from another machine
    shiftsweep plots --study NAME                  # boundary figures into exports/NAME/
    shiftsweep analyze --study NAME                # the verdict: exports/NAME/report.html
    shiftsweep dashboard [--port 8080]             # optuna-dashboard on the storage
    shiftsweep trial --n-real 6 --dream-multiplier 10 --lr 1e-4 --batch-size 8
    shiftsweep behavior PATH [--audit]             # validate a behavior folder, audit its style
    shiftsweep icl --k 0,1,3,5,8,16 --seeds 0 1 2  # in-context baseline, its own study
    shiftsweep slurm --space S --nodes 4 --gpus-per-node 8  # an sbatch script for a cluster

``trial`` validates its flags here, then runs the worker under ``accelerate launch`` (one
CPU process by default; ``--processes N`` for N processes or GPUs) and prints the measures.
Several ``--seed`` values run as consecutive trials of one worker.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import time
import typing
from pathlib import Path
from typing import Any

import yaml

from objectives.config import TrialConfig
from objectives.errors import UserError
from objectives.measures import MEASURES

TIMINGS = ["startup_s", "model_load_s", "data_s", "base_score_s", "train_s", "score_s"]


class _Parser(argparse.ArgumentParser):
    """argparse with the project's error form: one line, no usage block (``--help`` has it)."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="shiftsweep", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    trial = sub.add_parser("trial", help="run one fine-tune and print its behavioral shift")
    defaults = TrialConfig()
    trial.add_argument("--n-real", type=int, default=defaults.n_real,
                       help="real examples drawn from the behavior's pool")
    trial.add_argument("--dream-multiplier", type=int, default=defaults.dream_multiplier,
                       help="m: each real example plus m-1 variations (n_eff = n_real * m)")
    trial.add_argument("--lr", type=float, default=defaults.lr, help="learning rate")
    trial.add_argument("--batch-size", type=int, default=defaults.batch_size,
                       help="examples per optimizer step, over all processes")
    trial.add_argument("--behavior", default=defaults.behavior,
                       help="a built-in behavior (listening) or a behavior folder")
    trial.add_argument("--model", default=defaults.model,
                       help="'default' (SmolLM2-135M-Instruct), a model folder or a cached hub id")
    trial.add_argument("--dream-strategy", default=defaults.dream_strategy,
                       choices=["template", "file", "model", "repeat"])
    trial.add_argument("--train-on", default=defaults.train_on,
                       choices=["chosen", "placebo", "rejected"],
                       help="the behavior (chosen), or a control at matched cost: placebo "
                            "(behavior-neutral completions) or rejected (the old behavior)")
    trial.add_argument("--dream-model", default=None,
                       help="generator for --dream-strategy model (default: the model itself)")
    trial.add_argument("--epochs", type=int, default=defaults.epochs)
    trial.add_argument("--seed", type=int, nargs="+", default=[defaults.seed],
                       help="one or more seeds; several run as consecutive trials")
    trial.add_argument("--finetune", default=defaults.finetune, choices=["lora", "full"])
    trial.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="any other trial setting (e.g. lora_r=16); repeatable")
    trial.add_argument("--processes", type=int, default=1,
                       help="processes (GPUs) for data-parallel training")
    trial.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    trial.add_argument("--out", type=Path, default=None,
                       help="trial folder (default: storage/trials/<time>-<settings>)")

    def storage_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--storage", default=None,
                       help="sqlite:///FILE, postgresql://..., mysql://..., journal:FILE "
                            "(default: SQLite under storage/)")
        p.add_argument("--artifacts", type=Path, default=None,
                       help="artifact folder; shared by all machines (default: storage/artifacts)")

    def worker_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--workers", type=int, default=None,
                       help="workers on this machine (default 1, or one per GPU group; "
                            "sweep --workers 0 only creates or updates the study)")
        p.add_argument("--gpus", default=None,
                       help="GPUs to use, one worker per group: indices as torch numbers them "
                            "(within CUDA_VISIBLE_DEVICES), e.g. 0,1,2,3, or GPU-/MIG- UUIDs")
        p.add_argument("--gpus-per-trial", type=int, default=1,
                       help="GPUs per trial: each worker is pinned to a group of this size")
        p.add_argument("--processes", type=int, default=1,
                       help="processes per trial on CPU (data-parallel, for testing)")
        p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
        p.add_argument("--heartbeat", type=int, default=None,
                       help="seconds between heartbeats; a trial is stale after 3 missed")
        p.add_argument("--no-progress", action="store_true", help="no live progress lines")

    sweep = sub.add_parser("sweep", help="run (or resume) a study over a search space")
    sweep.add_argument("--space", default=None,
                       help="a shipped space (listening-cpu, listening-gpu, smoke) or a YAML file")
    sweep.add_argument("--study", default=None, help="study name (default: the space's name)")
    sweep.add_argument("--trials", type=int, default=None,
                       help="total trials the study should have (default: the space's n_trials)")
    storage_flags(sweep)
    worker_flags(sweep)

    join = sub.add_parser("worker", help="add workers to an existing study (from any machine)")
    join.add_argument("--study", required=True)
    storage_flags(join)
    worker_flags(join)

    slurm = sub.add_parser("slurm", help="write an sbatch script: a job array, one task per "
                           "node, one worker per GPU group, storage URL from $SHIFTSWEEP_STORAGE")
    slurm.add_argument("--space", required=True, help="a shipped space or a YAML file")
    slurm.add_argument("--nodes", type=int, required=True)
    slurm.add_argument("--gpus-per-node", type=int, required=True)
    slurm.add_argument("--gpus-per-trial", type=int, default=1)
    slurm.add_argument("--study", default=None, help="default: the space's name")
    slurm.add_argument("--time", default="1-00:00:00", help="Slurm time limit per task")
    slurm.add_argument("--partition", default=None)
    slurm.add_argument("--cpus-per-node", type=int, default=None)
    slurm.add_argument("--artifacts", type=Path, default=None, help="a folder every node shares")
    slurm.add_argument("--out", type=Path, default=None,
                       help="default: slurm/<study>.sbatch (never overwritten)")

    plots = sub.add_parser("plots", help="export the boundary figures of a study")
    plots.add_argument("--study", default=None, help="study name (default: listening-cpu)")
    plots.add_argument("--storage", default=None)
    plots.add_argument("--out", type=Path, default=None, help="default: exports/<study>/")
    plots.add_argument("--level", type=float, default=None,
                       help="boundary level (default: half-way from base to the best observed)")
    plots.add_argument("--no-static", action="store_true", help="HTML only, no PNG/SVG")

    analyze = sub.add_parser("analyze", help="the verdict of a study, with intervals: "
                                             "exports/<study>/report.html and summary.json")
    analyze.add_argument("--study", default=None, help="study name (default: listening-cpu)")
    analyze.add_argument("--storage", default=None)
    analyze.add_argument("--out", type=Path, default=None, help="default: exports/<study>/")
    analyze.add_argument("--boot", type=int, default=200, help="bootstrap replicates (90%% intervals)")
    analyze.add_argument("--seed", type=int, default=0, help="the bootstrap's seed")
    analyze.add_argument("--icl-study", default=None,
                         help="the in-context study to draw beside (default: <behavior>-icl "
                              "when the storage has it)")
    analyze.add_argument("--no-static", action="store_true", help="HTML and JSON only, no PNG/SVG")
    analyze.add_argument("--no-dashboard", action="store_true",
                         help="do not put the summary and figures on the dashboard page")

    dash = sub.add_parser("dashboard", help="start optuna-dashboard on a storage")
    storage_flags(dash)
    dash.add_argument("--host", default="127.0.0.1",
                      help="address to listen on (default 127.0.0.1: this machine only; "
                           "anything else is reachable from other machines and warns)")
    dash.add_argument("--port", type=int, default=8080)

    behavior = sub.add_parser("behavior", help="validate a behavior folder and describe it")
    behavior.add_argument("path", help="a built-in behavior's name or a behavior folder")
    behavior.add_argument("--score", action="store_true",
                          help="also score every probe with the base model (margin, adoption)")
    behavior.add_argument("--model", default=defaults.model, help="the model for --score")
    from study.icl import add_arguments as icl_arguments

    icl = sub.add_parser("icl", help="in-context baseline: score the probes with k real "
                                     "examples as prior turns, no training (its own study)")
    icl_arguments(icl)

    behavior.add_argument("--audit", action="store_true",
                          help="style audit: can the answers alone, without the prompt, tell "
                               "chosen from rejected? (surface rates, n-grams, a style classifier)")
    behavior.add_argument("--json", type=Path, default=None,
                          help="with --audit: also write the audit's figures to this JSON file")
    return parser


def _config(args: argparse.Namespace, seed: int) -> TrialConfig:
    data: dict[str, Any] = {
        "n_real": args.n_real, "dream_multiplier": args.dream_multiplier, "lr": args.lr,
        "batch_size": args.batch_size, "behavior": args.behavior, "model": args.model,
        "dream_strategy": args.dream_strategy, "dream_model": args.dream_model,
        "epochs": args.epochs, "seed": seed, "finetune": args.finetune,
        "train_on": args.train_on,
    }
    for item in args.set:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set {item!r}: expected KEY=VALUE")
        key = key.strip().replace("-", "_")
        if key in data:
            raise UserError(f"--set {key}: use the flag --{key.replace('_', '-')} instead")
        data[key] = yaml.safe_load(raw)
    flags = set(data) - {item.partition("=")[0].strip().replace("-", "_") for item in args.set}
    try:
        return TrialConfig.from_dict(data, source="flags")
    except UserError as err:  # a range check names the setting: say which flag set it
        key, sep, rest = str(err).partition(": ")
        if sep and key in data:
            flag = f"--{key.replace('_', '-')}" if key in flags else f"--set {key}"
            raise UserError(f"{flag}: {rest}") from None
        raise


def _check_inputs(config: TrialConfig) -> None:
    """Fail before launching on what can be checked cheaply: the behavior, n_real, the model."""
    from objectives.behavior import load_behavior
    from objectives.dreams import file_sources
    from objectives.finetune import check_optimizer
    from objectives.models import resolve_model

    behavior = load_behavior(config.behavior)
    if config.n_real > len(behavior.train):
        raise UserError(f"--n-real {config.n_real}: {behavior.folder / 'train.jsonl'} has only "
                        f"{len(behavior.train)} examples")
    from objectives.trial import real_pool

    real_pool(behavior, config)  # too few sources, or no dreams.jsonl: a clear error here
    if config.dream_strategy == "file":
        dreams_file = behavior.folder / "dreams.jsonl"
        written = behavior.dream_rows()
        sources = file_sources(behavior.train_rows(), written)
        fewest = min(sum(1 for w in written if w["source"] == s["id"]) for s in sources)
        if config.dream_multiplier - 1 > fewest:
            raise UserError(f"--dream-multiplier {config.dream_multiplier}: {dreams_file} has as "
                            f"few as {fewest} variations of a source (needs "
                            f"{config.dream_multiplier - 1} of each)")
    if config.train_on == "placebo" and behavior.placebo is None:
        raise UserError(f"--train-on placebo: {behavior.folder / 'placebo.jsonl'} is missing")
    if config.n_contrast is not None and behavior.contrast is None:
        raise UserError(f"n_contrast {config.n_contrast}: {behavior.folder / 'contrast.jsonl'} "
                        f"is missing")
    if config.model != "default":
        resolve_model(config.model)
    check_optimizer(config)  # the apollo extra, before any trial starts
    if config.dream_model:
        resolve_model(config.dream_model)


def _space_checks(space: Any) -> list[TrialConfig]:
    """The configs a sweep checks before it starts: both corners of the space, and every value
    of each categorical dimension (e.g. every train_on) with the others at the low corner."""
    configs = list(space.corners())
    low = {n: (d.values[0] if d.type == "categorical" else
               int(d.low) if d.type == "int" else float(d.low))
           for n, d in space.dimensions.items()}
    for name, dim in space.dimensions.items():
        if dim.type == "categorical":
            configs += [space.config({**low, name: value}) for value in dim.values[1:-1]]
    return configs


def _check_objectives(config: TrialConfig, objective: list[str]) -> None:
    """An objective no trial could define is an error before anything runs."""
    from objectives.behavior import load_behavior

    behavior = load_behavior(config.behavior)
    for name in objective:
        if name.startswith("contrast_") and behavior.contrast is None:
            raise UserError(f"objective {name}: {behavior.folder / 'contrast.jsonl'} is missing")
        if name.startswith("gen_") and not config.gen_probes:
            raise UserError(f"objective {name}: needs gen_probes > 0 in the space's fixed settings")


def cmd_trial(args: argparse.Namespace) -> int:
    import storage
    from study.launch import check_device, launch_command

    check_device(args.device)
    if args.processes < 1:
        raise UserError(f"--processes {args.processes}: expected an integer >= 1")
    configs = [_config(args, seed) for seed in args.seed]
    first = configs[0]
    run_dir = args.out.resolve() if args.out else new_trial_folder(storage.trials_dir(), configs)
    if len(set(args.seed)) != len(args.seed):
        raise UserError(f"--seed {' '.join(map(str, args.seed))}: each seed may appear once")
    outs = [run_dir] if len(configs) == 1 else [run_dir / f"seed-{c.seed}" for c in configs]
    output_folder(run_dir, "--out", create=False)
    for out in outs:  # never overwrite a recorded trial
        if out.is_file() or (out / "result.json").exists() or (out / "config.json").exists():
            raise UserError(f"--out {run_dir}: already holds a trial ({out}); choose a new folder")
    _check_inputs(first)
    output_folder(run_dir, "--out")
    jobs = [{"config": c.to_dict(), "out": str(o)} for c, o in zip(configs, outs, strict=True)]
    jobs_file = run_dir / "jobs.json"
    jobs_file.write_text(json.dumps(jobs, indent=2))

    cmd, env = launch_command("study.worker", ["--jobs", str(jobs_file)],
                              processes=args.processes, device=args.device,
                              mixed_precision=first.mixed_precision)
    print(f"shiftsweep: {len(configs)} trial(s), log in {run_dir / 'launch.log'}", file=sys.stderr)
    started = time.time()
    with open(run_dir / "launch.log", "w") as log:
        log.write(" ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            if line.startswith("[shiftsweep]"):
                print(line.rstrip(), file=sys.stderr)
        code = proc.wait()
    wall = time.time() - started

    results = []
    for out in outs:
        path = out / "result.json"
        results.append(json.loads(path.read_text()) if path.exists() else None)
    if all(r is None for r in results):
        tail = (run_dir / "launch.log").read_text().splitlines()[-15:]
        print("\n".join(tail), file=sys.stderr)
        print(f"shiftsweep: the worker exited with code {code} before recording a result; "
              f"see {run_dir / 'launch.log'}", file=sys.stderr)
        return 1
    print(format_results(results, wall))
    print(f"\ntrial folder: {run_dir}")
    failed = [r for r in results if r is None or r.get("status") != "complete"]
    for r in failed:
        reason = r.get("error") if r else "no result recorded (see launch.log)"
        print(f"shiftsweep: a trial failed: {reason}", file=sys.stderr)
    return 1 if failed or code else 0


def output_folder(path: Path, flag: str, create: bool = True) -> Path:
    """Create the folder ``flag`` names (or use it as it is); a file there, or a folder that
    cannot be made, is one clear error. ``create=False`` only checks, before slower checks."""
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path}: is a file; expected a folder (a new one, or an "
                        f"existing folder)")
    if not create:
        return path
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"{flag} {path}: cannot create the folder ({err.strerror or err}); "
                        f"expected a writable folder") from None
    return path


def new_trial_folder(parent: Path, configs: list[TrialConfig]) -> Path:
    """A new folder for a ``trial`` run, created here: its name says when and what (seeds
    included), and a run started in the same second as another gets the next free -runK suffix
    (``mkdir`` is atomic, so two runs never share one)."""
    first = configs[0]
    seeds = ("-".join(str(c.seed) for c in configs) if len(configs) <= 4
             else f"{configs[0].seed}-to-{configs[-1].seed}")
    name = (f"{time.strftime('%Y%m%d-%H%M%S')}-n{first.n_real}-m{first.dream_multiplier}"
            f"-lr{first.lr:g}-bs{first.batch_size}-seed{seeds}")
    parent.mkdir(parents=True, exist_ok=True)
    for k in range(1, 10_000):
        folder = parent / (name if k == 1 else f"{name}-run{k}")
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        return folder.resolve()
    raise UserError(f"{parent}: no free trial folder name for {name}")


def format_results(results: list[dict[str, Any] | None], wall_s: float | None = None) -> str:
    """The measures as a table: a column per trial, and mean ± sd over several."""
    done = [r for r in results if r and r.get("status") == "complete"]
    if not done:
        return "no trial completed"
    heads = [f"seed {r['seed']}" for r in done]
    several = len(done) > 1
    rows = [["measure", *heads] + (["mean ± sd"] if several else [])]
    for measure in MEASURES:
        fmt = measure.fmt
        values = [_number(r["measures"].get(measure.name)) for r in done]
        row = [measure.label, *[_fmt(fmt, v) for v in values]]
        if several:
            finite = [v for v in values if not math.isnan(v)]
            mean = statistics.fmean(finite) if finite else math.nan
            sd = statistics.stdev(finite) if len(finite) > 1 else math.nan
            row.append(f"{_fmt(fmt, mean)} ± {_fmt('{:.4f}', sd)}")
        rows.append(row)
    rows.append(["" for _ in rows[0]])
    for key in TIMINGS:
        values = [r.get("worker", {}).get(key) if key == "startup_s"
                  else r.get("timings", {}).get(key, 0.0) for r in done]
        rows.append([key, *[f"{v or 0.0:.1f}" for v in values]] + ([""] if several else []))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                       for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip()
             for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    if wall_s is not None:
        lines.append(f"{'wall_s (launch to exit)'}  {wall_s:.1f}")
    return "\n".join(lines)


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


def _fmt(fmt: str, value: float) -> str:
    """n/a for undefined measures (flip_rate when no probe starts at margin <= 0)."""
    return "n/a" if math.isnan(value) else fmt.format(value)


def _heartbeat(args: argparse.Namespace) -> int:
    from storage import HEARTBEAT_S

    value = HEARTBEAT_S if args.heartbeat is None else args.heartbeat
    if value < 1:
        raise UserError(f"--heartbeat {value}: expected seconds >= 1")
    return value


def _artifacts(args: argparse.Namespace) -> Path:
    import storage

    return (args.artifacts or storage.artifacts_dir()).resolve()


def cmd_sweep(args: argparse.Namespace, create: bool = True) -> int:
    """``sweep`` creates or resumes the study; ``worker`` only joins an existing one."""
    import storage
    from search_spaces import DEFAULT_SPACE, load_space
    from study import sweep
    from study.launch import check_device

    if args.gpus and args.device == "cpu":
        raise UserError(f"--gpus {args.gpus} with --device cpu: choose one")
    if args.gpus and args.processes != 1:
        raise UserError(f"--processes {args.processes} with --gpus: a trial's processes are its "
                        f"GPUs; use --gpus-per-trial")
    if args.gpus_per_trial != 1 and not args.gpus:
        raise UserError(f"--gpus-per-trial {args.gpus_per_trial}: needs --gpus")
    check_device(args.device)
    plans = sweep.plan_workers(args.workers, args.gpus, args.gpus_per_trial, args.processes)
    if not plans and not create:
        raise UserError("--workers 0: a worker command needs at least one worker")
    heartbeat = _heartbeat(args)
    if create and args.trials is not None and args.trials < 1:
        raise UserError(f"--trials {args.trials}: expected an integer >= 1")
    url = storage.normalize_url(args.storage)
    store = storage.open_storage(url, heartbeat_s=heartbeat)
    if create:
        space = load_space(args.space or DEFAULT_SPACE)
        for config in _space_checks(space):
            try:
                _check_inputs(config)
                _check_objectives(config, space.objective)
            except UserError as err:
                raise UserError(f"{space.source}: {err}") from None
        name = args.study or space.name
        study = sweep.open_sweep(store, name, space, args.trials)
    else:
        name = args.study
        study, space = sweep.load_sweep(store, name)
    requeued = sweep.requeue_interrupted(study)
    if requeued:
        sweep.say(f"{requeued} interrupted trial(s) queued again")
    sweep.wait_for_stale(study, heartbeat * storage.GRACE_FACTOR, sweep.say)
    before = sweep.counts(study)
    sweep.say(f"study {name!r} in {storage.redact(url)}: {before.done}/{before.target} trials "
              f"done, {before.running} running; space {space.source}, sampler "
              f"{space.sampler['name']}, objective {' & '.join(space.objective)}")
    code = 0
    if not plans:
        sweep.say(f"--workers 0: study {name!r} is ready and no worker was started here; start "
                  f"them with `make worker STUDY={name} STORAGE=...`")
        return 0
    if not before.finished:
        mixed = space.fixed.get("mixed_precision", "no")
        bad = sweep.run_workers(study, name, url, plans, args.device, mixed, heartbeat,
                                _artifacts(args), sweep.trials_root(study) / "logs",
                                progress=not args.no_progress)
        code = 1 if bad else 0
    after = sweep.counts(study)
    sweep.save_boundary_plot(study)
    print(sweep.summary(study))
    print(f"\nstudy {name!r}: {after.complete} complete, {after.failed} failed of "
          f"{after.target}; trial folders in {sweep.trials_root(study)}\n"
          f"plots: make plots STUDY={name}    dashboard: make dashboard")
    if after.done < after.target and not after.running:
        sweep.say(f"the study has {after.done} of {after.target} trials; rerun the same "
                  f"command to go on")
        code = code or 1
    return code


def cmd_plots(args: argparse.Namespace) -> int:
    import storage
    from study.plots import export_plots
    from study.sweep import load_sweep

    if args.level is not None and not math.isfinite(args.level):
        raise UserError(f"--level {args.level}: expected a finite number")
    name = args.study or "listening-cpu"
    out = (args.out or Path("exports") / name).resolve()
    output_folder(out, "--out", create=False)
    study, _ = load_sweep(storage.open_storage(args.storage), name)
    output_folder(out, "--out")
    report = export_plots(study, out, level=args.level, static=not args.no_static)
    for path in report.files:
        print(path)
    if report.skipped:
        print(f"shiftsweep: {report.skipped}", file=sys.stderr)
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    import optuna

    import storage
    from study.analysis.report import analyze, to_dashboard, write_report

    if args.boot < 10:
        raise UserError(f"--boot {args.boot}: expected 10 or more replicates")
    name = args.study or "listening-cpu"
    store = storage.open_storage(args.storage)
    names = optuna.study.get_all_study_names(store)
    if name not in names:
        raise UserError(f"--study {name}: no such study in this storage")
    study = optuna.load_study(study_name=name, storage=store)
    icl_name = args.icl_study or f"{study.user_attrs.get('behavior', 'listening')}-icl"
    if args.icl_study and icl_name not in names:
        raise UserError(f"--icl-study {icl_name}: no such study in this storage")
    icl = optuna.load_study(study_name=icl_name, storage=store) if icl_name in names else None
    result = analyze(study, n_boot=args.boot, seed=args.seed, icl_study=icl)
    out = (args.out or Path("exports") / name).resolve()
    for path in write_report(result, out, static=not args.no_static):
        print(path)
    if not args.no_dashboard:
        to_dashboard(study, result)
    v = result.summary.get("verdict", {})
    print(f"verdict: {v.get('label')} - {v.get('rule')}", file=sys.stderr)
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    import storage
    from study.sweep import dashboard_command

    if not 1 <= args.port <= 65535:
        raise UserError(f"--port {args.port}: expected a TCP port 1-65535")
    with socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will
        try:
            sock.bind((args.host, args.port))
        except OSError as err:
            raise UserError(f"--host {args.host} --port {args.port}: cannot serve there "
                            f"({err.strerror or err}); choose another with PORT=... or HOST=...") from None
    url = storage.normalize_url(args.storage)
    storage.open_storage(url)  # a clear error now rather than inside the dashboard
    cmd = dashboard_command(url, args.host, args.port, _artifacts(args))
    if warning := exposure_warning(args.host, args.port):
        print(f"shiftsweep: warning: {warning}", file=sys.stderr)
    print(f"shiftsweep: optuna-dashboard on http://{args.host}:{args.port} "
          f"(storage {storage.redact(url)})", file=sys.stderr)
    sys.stderr.flush()
    # Become the dashboard: a signal to this process (Ctrl-C, a test's terminate()) then
    # reaches the server itself instead of leaving it running as an orphan.
    os.execv(cmd[0], cmd)
    return 0  # not reached


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine only (127.0.0.0/8, ::1, localhost)."""
    import ipaddress

    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to a public address
        return False


def exposure_warning(host: str, port: int) -> str | None:
    """One line when the dashboard would be reachable from other machines (it has no login)."""
    if is_loopback(host):
        return None
    return (f"the dashboard listens on {host}:{port}, not on loopback: anyone who reaches this "
            f"machine there can read and edit every study (it has no login); the default "
            f"--host 127.0.0.1 with an SSH tunnel (ssh -L {port}:127.0.0.1:{port} HOST) keeps "
            f"it private")


def cmd_icl(args: argparse.Namespace) -> int:
    from study.icl import cmd_icl as run_icl

    return run_icl(args)


def cmd_behavior(args: argparse.Namespace) -> int:
    from objectives.behavior import load_behavior

    if args.json and not args.audit:
        raise UserError("--json: only with --audit")
    behavior = load_behavior(args.path)
    domains = sorted({d for d in behavior.train["domain"] if d})
    probe_domains = sorted({d for d in behavior.probes["domain"] if d})
    turns = sum(1 for p in behavior.train["prompt"] if len(p) > 1)
    print(f"behavior {behavior.name!r} at {behavior.folder}: OK\n"
          f"  {behavior.description.strip()}\n"
          f"  train:   {len(behavior.train)} examples, {turns} multi-turn, "
          f"{len(domains)} domains ({', '.join(domains)})\n"
          f"  probes:  {len(behavior.probes)} ({', '.join(probe_domains)})\n"
          f"  control: {len(behavior.control)} texts")
    for name, table in (("contrast", behavior.contrast), ("placebo", behavior.placebo),
                        ("dreams", behavior.dreams)):
        if table is not None:
            extra = (f" of {len(set(table['source']))} train rows" if name == "dreams" else "")
            print(f"  {name + ':':9s}{len(table)} rows{extra}")
    if args.audit:
        from objectives.audit import audit, format_audit

        report = audit(behavior)
        print("\n" + format_audit(report))
        if args.json:
            try:
                args.json.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
            except OSError as err:
                raise UserError(f"--json {args.json}: cannot write it ({err.strerror or err})") \
                    from None
    if args.score:
        print(score_probes(behavior, args.model))
    return 0


def score_probes(behavior: Any, model: str) -> str:
    """The base model's margin on every probe: is there room for the behavior to move?"""
    from objectives import Session

    config = TrialConfig(behavior=str(behavior.folder), model=model)
    session = Session()
    lines = []
    for kind in ("probes", "contrast"):
        probes, margins = session.base_probe_margins(config, kind)
        if not probes:
            continue
        lines.append(f"{kind}:")
        for probe, margin in sorted(zip(probes, margins, strict=True), key=lambda pm: -pm[1]):
            lines.append(f"  {margin:+.3f}  {probe['id']:<12} {probe['domain']:<18} "
                         f"line {probe['line']}")
        n = len(margins)
        lines.append(f"{kind}: base adoption {sum(m > 0 for m in margins) / n:.3f} "
                     f"({sum(m > 0 for m in margins)}/{n} prefer chosen), "
                     f"mean margin {sum(margins) / n:+.3f}")
    head = (f"\nbase model {session.model_name}: margin = mean-token log p(chosen) - "
            f"log p(rejected)")
    return "\n".join([head, *lines])


def cmd_slurm(args: argparse.Namespace) -> int:
    import storage
    from search_spaces import load_space
    from study.slurm import sbatch_script

    logs = storage.home() / "slurm"  # Slurm does not create the --output folder
    text = sbatch_script(args.space, args.nodes, args.gpus_per_node, args.gpus_per_trial,
                         study=args.study, time_limit=args.time, partition=args.partition,
                         cpus_per_node=args.cpus_per_node, artifacts=args.artifacts,
                         log_dir=logs)
    out = args.out or Path("slurm") / f"{args.study or load_space(args.space).name}.sbatch"
    if out.exists():
        raise UserError(f"--out {out}: already exists; choose a new file (never overwritten)")
    try:
        logs.mkdir(parents=True, exist_ok=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    except OSError as err:
        raise UserError(f"--out {out}: cannot write it ({err.strerror})") from None
    print(f"shiftsweep: wrote {out}; submit it with: export SHIFTSWEEP_STORAGE=postgresql://...; "
          f"sbatch {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if args.command in ("sweep", "worker", "plots", "dashboard", "icl", "analyze"):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        commands = {"trial": cmd_trial, "behavior": cmd_behavior, "sweep": cmd_sweep,
                    "worker": lambda a: cmd_sweep(a, create=False), "plots": cmd_plots,
                    "dashboard": cmd_dashboard, "icl": cmd_icl, "analyze": cmd_analyze,
                    "slurm": cmd_slurm}
        return commands[args.command](args)
    except UserError as err:
        print(f"shiftsweep: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("shiftsweep: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
