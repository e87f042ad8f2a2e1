"""The chaos table, fault by fault: the scenarios ``make chaos`` runs, against real sweeps.

Each scenario starts the real ``shiftsweep sweep`` (or ``make sweep``) on the tiny random
model in its own sandbox, injects its fault from outside, and compares the study before and
after (see ``study.chaos``). A row passes when no finished trial was lost, none ran twice,
and the sweep did what the fault calls for (retried, recorded ``diverged``/``oom``, stopped
within seconds and resumed to the right count, ...).
"""

from __future__ import annotations

import pytest

from study import chaos


def test_lost_and_twice_are_counted_from_the_records(tmp_path):
    """The two counts the table exits on, on hand-made records (no sweep needed)."""
    before = chaos.Snapshot(complete={0: (0.5,), 1: (0.25,)},
                            folders={"t0/result.json": (0, 0.5), "t1/result.json": (1, 0.25)})
    same = chaos.Snapshot(complete={0: (0.5,), 1: (0.25,), 2: (0.1,)},
                          folders={"t0/result.json": (0, 0.5), "t1/result.json": (1, 0.25)})
    assert chaos.count_lost(before, same) == (0, [])
    # trial 1 no longer COMPLETE, and trial 0's folder overwritten by trial 3's result
    changed = chaos.Snapshot(complete={0: (0.5,)},
                             folders={"t0/result.json": (3, 0.7), "t1/result.json": (1, 0.25)})
    assert chaos.count_lost(before, changed) == (2, ["trial 0", "trial 1"])

    import optuna
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState

    dist = {"lr": FloatDistribution(1e-4, 1e-2, log=True)}

    def trial(number: int, lr: float, folder: str, state=TrialState.COMPLETE, seed: int = 0):
        t = optuna.trial.create_trial(params={"lr": lr}, distributions=dist, state=state,
                                      value=0.1 if state == TrialState.COMPLETE else None,
                                      user_attrs={"seed": seed, "trial_dir": str(tmp_path / folder)})
        t.number = number
        return t

    fine = [trial(0, 1e-3, "a"), trial(1, 1e-3, "b", seed=1), trial(2, 2e-3, "c", TrialState.FAIL),
            trial(3, 2e-3, "d")]  # a replicate (another seed) and a retry are not repeats
    assert chaos.count_twice(fine, target=3)[0] == 0
    repeated = [*fine, trial(4, 1e-3, "e")]  # point and seed of trial 0 again
    assert chaos.count_twice(repeated, target=4) == (1, ["trials [0, 4] ran the same point and seed"])
    shared = [trial(0, 1e-3, "a"), trial(1, 2e-3, "a")]
    assert chaos.count_twice(shared, target=2)[1] == ["trials [0, 1] wrote into a"]
    assert chaos.count_twice(fine, target=2)[1] == ["3 complete trials for a target of 2"]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(chaos.SCENARIOS))
def test_fault_loses_nothing_and_runs_nothing_twice(name, request):
    server = request.getfixturevalue("postgres_server") if name in chaos.NEEDS_POSTGRES else None
    row = chaos.run_scenario(name, chaos.Context(server=server))
    if row.skipped:
        pytest.skip(row.happened)
    assert row.lost == 0, row.happened
    assert row.twice == 0, row.happened
    assert row.expected, row.happened
