"""The in-context-learning baseline: k real examples in the prompt, no training.

For a probe x and demos d_1..d_k (real training rows), the augmented prompt is the
conversation d_1's prompt, d_1's CHOSEN answer (as an assistant turn), ..., d_k's prompt,
d_k's chosen answer, then x's own messages. ``margin(x)`` is then the usual mean-token
log p(chosen|x) - log p(rejected|x) (``objectives.scoring.margins``) under that prompt, so
``shift`` at k is directly comparable with a fine-tune's shift at n_real = k.

The demos are the first k of the seeded nested draw a fine-tune uses
(:func:`objectives.dreams.select_real`): ICL at k and fine-tuning at n_real = k, same seed,
see the same real examples, and the demos at k are a prefix of those at any larger k.

The prompt is never cut: :func:`fit_max_length` picks the length from the token counts of
the sequences actually scored, and :func:`icl_margins` refuses (a :class:`UserError`) a
``max_length`` that would truncate one of them. Knows nothing of Optuna.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

from objectives import dreams, scoring
from objectives.errors import UserError
from objectives.tokens import Messages, encode_pair

Row = dict[str, Any]
UNBOUNDED = 10 ** 9  # a max_length nothing reaches: encode_pair then cuts nothing


def icl_demos(pool: list[Row], k: int, seed: int) -> list[Row]:
    """The k demos for ``seed``: the real examples a fine-tune of n_real = k draws."""
    if k < 0:
        raise UserError(f"--k {k}: expected an integer >= 0")
    return dreams.select_real(pool, k, seed)


def icl_prompt(demos: list[Row], messages: Messages) -> Messages:
    """The demos as prior conversation turns (prompt messages, then an assistant turn with
    the CHOSEN answer), followed by ``messages``. k = 0 returns a copy of ``messages``."""
    out: Messages = []
    for demo in demos:
        out += [{"role": m["role"], "content": m["content"]} for m in demo["prompt"]]
        out.append({"role": "assistant", "content": demo["chosen"]})
    return out + [{"role": m["role"], "content": m["content"]} for m in messages]


def icl_rows(probes: list[Row], demos: list[Row]) -> list[Row]:
    """The probes with their prompts augmented by the demos (every other field kept)."""
    return [dict(p, prompt=icl_prompt(demos, p["prompt"])) for p in probes]


def sequence_lengths(tokenizer: Any, rows: list[Row]) -> list[int]:
    """Tokens of each scored sequence (prompt + chosen, then prompt + rejected), uncut: the
    same encoding ``scoring.margins`` scores."""
    out = []
    for side in ("chosen", "rejected"):
        for row in rows:
            try:
                out.append(len(encode_pair(tokenizer, row["prompt"], row[side], UNBOUNDED,
                                           add_eos=False)))
            except Exception as err:  # a chat template that refuses the conversation
                if isinstance(err, UserError):
                    raise
                first = (str(err).strip().splitlines() or [type(err).__name__])[0]
                raise UserError(f"the model's chat template cannot render the in-context "
                                f"conversation for probe {row.get('id')!r} ({first})") from None
    return out


def context_limit(model: Any) -> int | None:
    """The model's maximum sequence length (its position embeddings), None when unknown."""
    config = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def fit_max_length(model: Any, tokenizer: Any, probes: list[Row], demos: list[Row]) -> int:
    """The smallest max_length that scores every probe with these demos uncut; a
    :class:`UserError` when that is more than the model's context."""
    need = max(sequence_lengths(tokenizer, icl_rows(probes, demos)), default=1)
    limit = context_limit(model)
    if limit is not None and need > limit:
        raise UserError(f"--k {len(demos)}: {len(demos)} in-context examples and a probe need "
                        f"{need} tokens, more than the model's context of {limit}; use a "
                        f"smaller --k")
    return need


def icl_margins(model: Any, tokenizer: Any, probes: list[Row], demos: list[Row], max_length: int,
                batch_size: int, autocast: scoring.Autocast = nullcontext) -> list[float]:
    """``margin(x)`` of each probe under the demo-augmented prompt (order of ``probes``).

    ``max_length`` must hold every scored sequence (see :func:`fit_max_length`): a prompt
    is never silently cut, so a smaller one is a :class:`UserError`.
    """
    rows = icl_rows(probes, demos)
    need = max(sequence_lengths(tokenizer, rows), default=1)
    if need > max_length:
        raise UserError(f"--k {len(demos)}: the in-context prompt needs {need} tokens but "
                        f"max_length is {max_length}; it would be cut (use fit_max_length)")
    return scoring.margins(model, tokenizer, rows, max_length, batch_size, autocast)
