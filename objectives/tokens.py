"""Turning prompts and completions into token ids, the same way for training and scoring.

A prompt is rendered with the model's chat template (``add_generation_prompt=True``); a model
without one gets a plain "User: ... / Assistant: " rendering. The completion is tokenized on
its own and appended, so its tokens are exactly the ones scored and trained on. Training adds
the end-of-turn token so the model learns where the answer stops; scoring leaves it out
(it is the same token for chosen and rejected).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

Messages = list[dict[str, str]]


@dataclass
class Encoded:
    """One sequence: ``ids`` with the positions of its target tokens (``start`` onward)."""

    ids: list[int]
    start: int  # index of the first completion token; 0 for plain texts

    def __len__(self) -> int:
        return len(self.ids)


def render_prompt(tokenizer: Any, messages: Messages) -> list[int]:
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if hasattr(ids, "keys"):  # some versions return a BatchEncoding
            ids = ids["input_ids"]
        return list(ids)
    text = "".join(f"{m['role'].capitalize()}: {m['content']}\n" for m in messages)
    ids = tokenizer(text + "Assistant:", add_special_tokens=True)["input_ids"]
    return list(ids)


def encode_pair(tokenizer: Any, messages: Messages, completion: str, max_length: int,
                add_eos: bool) -> Encoded:
    """Prompt + completion ids; too long → the completion keeps up to half, the prompt its end."""
    prompt = render_prompt(tokenizer, messages)
    lead = "" if getattr(tokenizer, "chat_template", None) else " "
    answer = list(tokenizer(lead + completion, add_special_tokens=False)["input_ids"])
    if add_eos and tokenizer.eos_token_id is not None:
        answer.append(tokenizer.eos_token_id)
    if len(prompt) + len(answer) > max_length:
        answer = answer[: max(max_length // 2, max_length - len(prompt))]
        prompt = prompt[len(prompt) + len(answer) - max_length:]
    return Encoded(prompt + answer, len(prompt))


def encode_text(tokenizer: Any, text: str, max_length: int) -> Encoded:
    ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])[:max_length]
    return Encoded(ids, 0)


def collate(batch: list[Encoded], pad_id: int, device: torch.device | str = "cpu",
            left: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Padded ``input_ids``, ``attention_mask``, ``labels`` (-100 off target) and
    ``position_ids`` (counted from each sequence's first real token, so left padding changes
    nothing). Left padding ends every sequence at the last position: scoring then needs
    logits only for the last few positions."""
    width = max(len(e) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    for row, enc in enumerate(batch):
        n = len(enc)
        begin = width - n if left else 0
        ids[row, begin:begin + n] = torch.tensor(enc.ids)
        mask[row, begin:begin + n] = 1
        first_target = max(enc.start, 1)  # nothing predicts a sequence's first token
        labels[row, begin + first_target:begin + n] = ids[row, begin + first_target:begin + n]
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), labels.to(device), positions.to(device)


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position log p(label) for next-token prediction, and the mask of scored positions.

    Both have shape (batch, seq-1): position t scores ``labels[:, t+1]`` from ``logits[:, t]``.
    """
    targets = labels[:, 1:]
    mask = targets != -100
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    picked = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return picked * mask, mask


@torch.no_grad()
def generate(model: Any, tokenizer: Any, prompts: list[Messages], max_new_tokens: int,
             batch_size: int, sample: dict[str, float] | None = None) -> list[str]:
    """The model's answer to each prompt: greedy, or sampled with ``sample`` (temperature,
    top_p). Prompts are left-padded in batches; special tokens are dropped from the text."""
    model.eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out: list[str] = []
    for start in range(0, len(prompts), batch_size):
        rendered = [render_prompt(tokenizer, m) for m in prompts[start:start + batch_size]]
        width = max(len(p) for p in rendered)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in rendered])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in rendered])
        options: dict[str, Any] = ({"do_sample": True, **sample} if sample else
                                   {"do_sample": False, "temperature": None, "top_p": None,
                                    "top_k": None})
        generated = model.generate(input_ids=ids.to(model.device),
                                   attention_mask=mask.to(model.device),
                                   max_new_tokens=max_new_tokens, pad_token_id=pad, **options)
        out += [tokenizer.decode(row, skip_special_tokens=True).strip()
                for row in generated[:, width:]]
    return out
