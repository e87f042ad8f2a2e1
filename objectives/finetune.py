"""The fine-tune: AdamW (or APOLLO, full fine-tuning only) on each example's completion, loss
on completion tokens only.

One optimizer step takes one *global* batch of ``batch_size`` examples. The batch is split
over the processes (rank r takes examples r, r+W, ...) and each share over micro-batches of
``micro_batch_size``; gradients accumulate without synchronisation, the processes agree that
every share succeeded (:mod:`objectives.ranks`), and then sum their gradients. The loss is
the sum of token losses divided by the number of completion tokens in the whole global batch,
so a step computes the same gradient whatever the number of processes or the micro-batch
size: ``steps = epochs * ceil(n_eff / batch_size)`` always.
A non-finite loss (a diverging run) raises :class:`objectives.errors.Diverged` at that step,
on every process at once.
"""

from __future__ import annotations

import importlib.util
import math
import random
import re
import time
from typing import Any

import torch
import torch.nn.functional as F

from objectives import faults, ranks
from objectives.config import TrialConfig
from objectives.errors import Diverged, UserError
from objectives.tokens import Encoded, collate, encode_pair


def global_batches(n: int, batch_size: int, epochs: int, seed: int) -> list[list[int]]:
    """Example indices of every optimizer step: a fresh seeded shuffle per epoch."""
    rng = random.Random(f"order:{seed}")
    steps = []
    for _ in range(epochs):
        order = list(range(n))
        rng.shuffle(order)
        steps += [order[i:i + batch_size] for i in range(0, n, batch_size)]
    return steps


# APOLLO's settings per optimizer name, for the attention and MLP weight matrices (every other
# parameter gets plain AdamW steps): transformers' defaults for "apollo_adamw", and the
# APOLLO-Mini settings of the APOLLO paper (rank 1, tensor-wise scaling).
APOLLO_SETTINGS = {
    "apollo": {"rank": 128, "proj": "random", "scale_type": "channel", "scale": 1.0,
               "update_proj_gap": 200, "proj_type": "std"},
    "apollo-mini": {"rank": 1, "proj": "random", "scale_type": "tensor", "scale": 128.0,
                    "update_proj_gap": 200, "proj_type": "std"},
}
APOLLO_TARGETS = re.compile(r".*(attn|attention|mlp).*")  # transformers' optim_target_modules
APOLLO_INSTALL = ("the optional extra apollo is not installed (pip install -e '.[apollo]'; "
                  "apollo-torch is CC-BY-NC-4.0: non-commercial use only)")


def apollo_optimizer_class() -> type:
    """APOLLO's AdamW, or a UserError saying how to install it."""
    if importlib.util.find_spec("apollo_torch") is None:
        raise UserError(f"optimizer apollo: {APOLLO_INSTALL}")
    try:
        from apollo_torch import APOLLOAdamW  # imports bitsandbytes too
    except ImportError as err:
        raise UserError(f"optimizer apollo: apollo_torch does not import ({err}); "
                        f"{APOLLO_INSTALL}") from None
    return APOLLOAdamW


def check_optimizer(config: TrialConfig) -> None:
    """Before any trial starts: the optimizer a config asks for can be built here."""
    if config.optimizer != "adamw":
        apollo_optimizer_class()


def make_optimizer(model: Any, config: TrialConfig) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters, or APOLLO (low-rank projected gradient scaling)
    on the attention and MLP weight matrices and AdamW steps on the rest."""
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    apollo = apollo_optimizer_class()
    projected = {id(m.weight) for name, m in model.named_modules()
                 if isinstance(m, torch.nn.Linear) and APOLLO_TARGETS.fullmatch(name)
                 and m.weight.requires_grad}
    if not projected:
        raise UserError(f"optimizer {config.optimizer}: this model has no attention or MLP "
                        f"torch.nn.Linear layers for APOLLO to project (GPT-2's are Conv1D)")
    groups = [{"params": [p for p in params if id(p) not in projected]},
              {"params": [p for p in params if id(p) in projected],
               **APOLLO_SETTINGS[config.optimizer]}]
    return apollo([g for g in groups if g["params"]], lr=config.lr,
                  weight_decay=config.weight_decay)


def train(model: Any, tokenizer: Any, rows: list[dict[str, Any]], config: TrialConfig,
          accelerator: Any) -> list[dict[str, float]]:
    """Fine-tune ``model`` in place on ``rows`` (``{"prompt", "completion"}``); returns the
    log, one record per step.

    ``model`` is the trainable module (a PeftModel or the full model); every process must
    call this with the same rows and config.
    """
    encoded = [encode_pair(tokenizer, r["prompt"], r["completion"], config.max_length, add_eos=True)
               for r in rows]
    plan = global_batches(len(encoded), config.batch_size, config.epochs, config.seed)
    optimizer = make_optimizer(model, config)
    params = [p for p in model.parameters() if p.requires_grad]
    from transformers import get_scheduler

    # transformers' "constant" ignores num_warmup_steps: warmup_steps > 0 means a warmed-up
    # constant schedule, not a setting dropped in silence
    schedule = ("constant_with_warmup" if config.lr_schedule == "constant" and config.warmup_steps
                else config.lr_schedule)
    scheduler = get_scheduler(schedule, optimizer, num_warmup_steps=config.warmup_steps,
                              num_training_steps=len(plan))
    # The model is not wrapped in DDP: its forward broadcasts buffers and its backward
    # all-reduces gradients, collectives that a process failing mid-step would leave the others
    # waiting in. The processes agree on each step first, then sum gradients (_sum_gradients).
    optimizer = accelerator.prepare(optimizer)
    wrapped = model
    world, rank = accelerator.num_processes, accelerator.process_index
    if world > 1:  # every process has got here; start from rank 0's weights, as DDP would
        ranks.exchange(accelerator)
        import torch.distributed as dist

        for p in params:
            dist.broadcast(p.data, src=0)
    wrapped.train()
    log: list[dict[str, float]] = []
    try:
        for step, batch in enumerate(plan, start=1):
            started = time.perf_counter()
            lr = scheduler.get_last_lr()[0]  # this step's; after scheduler.step() it is the next's
            tokens = sum(len(encoded[i]) - encoded[i].start for i in batch)  # target tokens
            share = batch[rank::world]
            micro = [share[i:i + config.micro_batch_size]
                     for i in range(0, len(share), config.micro_batch_size)]
            local_loss, error = 0.0, None
            try:
                faults.inject("train_step", rank)
                for part in micro:
                    nll = _nll_sum(wrapped, [encoded[i] for i in part], tokenizer.pad_token_id,
                                   accelerator)
                    accelerator.backward(nll / tokens)
                    local_loss += float(nll.detach())
            except Exception as err:
                error = err
            # Every process has its share's gradient, or has failed: agree, then sum them. Every
            # process gets the same summed loss, so a NaN or inf on any of them stops all at
            # this step (none waits in the next collective).
            loss = sum(ranks.exchange(accelerator, local_loss, error)) / tokens
            if not math.isfinite(loss):
                raise Diverged(step, loss, len(plan), log)
            if world > 1:
                _sum_gradients(params, accelerator)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            log.append({"step": step, "loss": loss, "lr": lr,
                        "examples": len(batch), "tokens": tokens,
                        "seconds": time.perf_counter() - started})
    finally:
        accelerator.free_memory(wrapped, optimizer)
    return log


def _sum_gradients(params: list[torch.nn.Parameter], accelerator: Any) -> None:
    """Sum every process's gradients (each already divided by the global batch's tokens), so a
    step's gradient does not depend on the number of processes; one flat all-reduce."""
    import torch.distributed as dist

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    offset = 0
    for p, g in zip(params, grads, strict=True):
        n = g.numel()
        p.grad = flat[offset:offset + n].view_as(p).to(p.dtype)
        offset += n


def _nll_sum(model: Any, batch: list[Encoded], pad_id: int, accelerator: Any) -> torch.Tensor:
    """Summed token loss of the completions. Left padding ends every sequence at the last
    position, so logits (a vocabulary-wide row per token) are computed for completions only."""
    ids, mask, labels, positions = collate(batch, pad_id, accelerator.device, left=True)
    keep = max(len(e) - max(e.start, 1) for e in batch) + 1
    with accelerator.autocast():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                       logits_to_keep=keep).logits
    targets = labels[:, -keep:][:, 1:]
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(),
                           ignore_index=-100, reduction="sum")
