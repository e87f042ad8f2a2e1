"""The fine-tune loop on tiny models: schedules, the logged lr, divergence, optimizers."""

from __future__ import annotations

import pytest
from accelerate import Accelerator

from objectives.config import TrialConfig
from objectives.finetune import train
from objectives.models import load_model


def _rows(n: int) -> list[dict]:
    return [{"prompt": [{"role": "user", "content": f"Use tabs in file {i}."}],
             "completion": f"Okay, tabs in file {i}: done."} for i in range(n)]


def _train(model_path, **settings):
    model, tokenizer, _ = load_model(str(model_path))
    config = TrialConfig(**{"n_real": 8, "batch_size": 2, "lr": 1e-3, **settings})
    return train(model, tokenizer, _rows(config.n_eff), config, Accelerator(cpu=True))


def test_the_logged_lr_is_the_one_each_step_used(tiny_gpt2):
    # linear decay over 4 steps: the steps use lr * (1, 3/4, 1/2, 1/4); the scheduler's
    # value after step k (what used to be logged) is the next step's
    log = _train(tiny_gpt2, lr_schedule="linear")
    assert [r["lr"] for r in log] == pytest.approx([1e-3 * f for f in (1, 0.75, 0.5, 0.25)])


def test_warmup_steps_warm_up_the_constant_schedule(tiny_gpt2):
    # warmup_steps 2 under the default constant schedule: 0, 1/2, then lr (transformers'
    # linear warmup starts at 0); warmup_steps was silently ignored before
    log = _train(tiny_gpt2, warmup_steps=2)
    assert [r["lr"] for r in log] == pytest.approx([0.0, 5e-4, 1e-3, 1e-3])
    assert [r["lr"] for r in _train(tiny_gpt2)] == pytest.approx([1e-3] * 4)


def test_a_diverging_run_stops_at_the_first_non_finite_loss(tiny_gpt2):
    import math

    from objectives.errors import Diverged

    with pytest.raises(Diverged) as caught:
        _train(tiny_gpt2, lr=1e30, n_real=40)  # 20 steps planned
    # step 1's loss comes before any update; the first update breaks the weights
    assert caught.value.step == 2 and not math.isfinite(caught.value.loss)
    assert [r["step"] for r in caught.value.log] == [1] and math.isfinite(caught.value.log[0]["loss"])


def _job(behavior, model, out, **settings):
    config = {"n_real": 4, "dream_multiplier": 2, "batch_size": 2, "lr": 1e-3, "n_probes": 2,
              "n_control": 2, "behavior": str(behavior), "model": str(model), **settings}
    return {"config": config, "out": str(out)}


def test_worker_records_diverged_and_oom_and_goes_on(tiny_behavior, tiny_gpt2, tmp_path):
    import json

    from objectives import Session
    from study.worker import run_job

    session = Session()
    jobs = [_job(tiny_behavior, tiny_gpt2, tmp_path / "diverged", lr=1e30),
            # a LoRA rank of 10^12 asks the real CPU allocator for 256 TB
            _job(tiny_behavior, tiny_gpt2, tmp_path / "oom", lora_r=10**12),
            _job(tiny_behavior, tiny_gpt2, tmp_path / "fine")]
    records = [run_job(session, job, i, str(i)) for i, job in enumerate(jobs)]
    diverged, oom, fine = records
    assert diverged["status"] == "failed" and diverged["failure"] == "diverged"
    assert diverged["error"].startswith("diverged: Diverged: non-finite training loss")
    assert "at step 2 of 4" in diverged["error"]
    logged = (tmp_path / "diverged" / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in logged] == [1], "the step before, not all four"
    assert oom["status"] == "failed" and oom["failure"] == "oom"
    assert oom["error"].startswith("oom: RuntimeError:") and "can't allocate memory" in oom["error"]
    assert json.loads((tmp_path / "oom" / "result.json").read_text())["failure"] == "oom"
    # the next trial runs, on an intact base model: the same result as in a fresh session
    assert fine["status"] == "complete"
    alone = run_job(Session(), _job(tiny_behavior, tiny_gpt2, tmp_path / "alone"), 0, "0")
    assert fine["measures"] == alone["measures"]


RANK_SCRIPT = '''
import json, sys
from accelerate import Accelerator
from objectives.config import TrialConfig
from objectives.errors import Diverged
from objectives.finetune import train
from objectives.models import load_model

model_path, out = sys.argv[1], sys.argv[2]
acc = Accelerator()
model, tokenizer, _ = load_model(model_path)
if acc.process_index == 1:
    calls = []

    def poison(module, args, output):  # this rank's logits turn NaN from its 2nd forward on
        calls.append(1)
        return output * float("nan") if len(calls) >= 2 else output

    model.lm_head.register_forward_hook(poison)
rows = [{"prompt": [{"role": "user", "content": f"Use tabs in file {i}."}],
         "completion": f"Okay, tabs in file {i}: done."} for i in range(16)]
config = TrialConfig(n_real=16, batch_size=4, lr=1e-3)
try:
    log = train(model, tokenizer, rows, config, acc)
    record = {"steps": len(log)}
except Diverged as err:
    record = {"diverged_at": err.step, "logged": len(err.log)}
with open(f"{out}/rank{acc.process_index}.json", "w") as f:
    json.dump(record, f)
'''


@pytest.mark.slow
def test_two_ranks_agree_to_stop_at_the_same_step(tiny_gpt2, tmp_path):
    """One rank's loss turns NaN (a fault on one GPU): both stop at that step, none waits."""
    import json
    import os
    import subprocess

    from study.launch import launch_command

    (tmp_path / "rank_divergence.py").write_text(RANK_SCRIPT)
    cmd, env = launch_command("rank_divergence", [str(tiny_gpt2), str(tmp_path)], processes=2,
                              device="cpu")
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env["PYTHONPATH"]])
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks == [{"diverged_at": 2, "logged": 1}] * 2


HAS_APOLLO = __import__("importlib.util").util.find_spec("apollo_torch") is not None


def test_apollo_with_lora_is_a_user_error():
    from objectives.errors import UserError

    with pytest.raises(UserError, match="optimizer apollo-mini: APOLLO trains full parameters "
                                        "only; set finetune: full"):
        TrialConfig(optimizer="apollo-mini")
    with pytest.raises(UserError, match="optimizer: expected one of 'adamw', 'apollo'"):
        TrialConfig.from_dict({"optimizer": "sgd"})
    assert TrialConfig(optimizer="apollo", finetune="full").optimizer == "apollo"


@pytest.mark.skipif(HAS_APOLLO, reason="the apollo extra is installed here")
def test_apollo_without_the_extra_is_a_user_error_before_any_trial(tiny_llama, tiny_behavior,
                                                                   tmp_path, capsys):
    import optuna
    import yaml

    from objectives.errors import UserError
    from objectives.finetune import check_optimizer
    from study.cli import main

    with pytest.raises(UserError, match=r"optional extra apollo is not installed .*CC-BY-NC-4.0"):
        check_optimizer(TrialConfig(optimizer="apollo", finetune="full"))
    space = {"dimensions": {"lr": {"type": "float", "low": 1e-4, "high": 1e-3},
                            "optimizer": {"type": "categorical",
                                          "values": ["adamw", "apollo-mini", "apollo"]}},
             "fixed": {"model": str(tiny_llama), "behavior": str(tiny_behavior),
                       "finetune": "full", "n_real": 2},
             "sampler": {"name": "random", "seed": 0}, "n_trials": 2}
    path = tmp_path / "apollo.yaml"
    path.write_text(yaml.safe_dump(space))
    db = tmp_path / "s.db"
    code = main(["sweep", "--space", str(path), "--storage", f"sqlite:///{db}", "--workers", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "apollo.yaml" in err[0] and "optional extra apollo is not installed" in err[0]
    assert not db.exists() or not optuna.get_all_study_summaries(f"sqlite:///{db}"), \
        "no study was created"


@pytest.mark.skipif(not HAS_APOLLO, reason="needs the apollo extra (pip install -e '.[apollo]')")
@pytest.mark.parametrize("optimizer", ["apollo", "apollo-mini"])
def test_apollo_trains_the_attention_and_mlp_weights(tiny_llama, optimizer):
    from objectives.finetune import APOLLO_SETTINGS, make_optimizer

    model, tokenizer, _ = load_model(str(tiny_llama))
    config = TrialConfig(n_real=8, batch_size=2, lr=1e-3, finetune="full", optimizer=optimizer)
    groups = make_optimizer(model, config).param_groups
    projected = [g for g in groups if "rank" in g]
    assert len(projected) == 1 and projected[0]["rank"] == APOLLO_SETTINGS[optimizer]["rank"]
    # 2 layers x (q, k, v, o + gate, up, down): the weight matrices APOLLO projects
    assert len(projected[0]["params"]) == 14
    before = model.model.layers[0].self_attn.q_proj.weight.detach().clone()
    log = train(model, tokenizer, _rows(8), config, Accelerator(cpu=True))
    assert len(log) == 4 and log[-1]["loss"] < log[0]["loss"]
    assert not torch_equal(before, model.model.layers[0].self_attn.q_proj.weight)


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b.detach()))


def test_failure_reasons_are_classified_in_one_place():
    import torch

    from objectives.errors import Diverged, UserError, failure_kind, failure_reason

    try:  # the real CPU allocator's failure: a plain RuntimeError
        torch.empty(2**46)
    except RuntimeError as err:
        cpu = err
    cases = [(cpu, "oom"), (MemoryError(), "oom"),
             (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "oom"),
             (Diverged(3, float("nan"), 9, []), "diverged"), (UserError("--lr: bad"), "user"),
             (RuntimeError("shape mismatch"), "error"), (ValueError("out of range"), "error")]
    assert [failure_kind(e) for e, _ in cases] == [k for _, k in cases]
    assert failure_reason(MemoryError()) == "oom: MemoryError"
    assert failure_reason(UserError("--lr: bad")) == "--lr: bad"
    assert failure_reason(RuntimeError("shape mismatch")) == "RuntimeError: shape mismatch"
