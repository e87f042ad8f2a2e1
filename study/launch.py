"""The one place that builds an ``accelerate launch`` command."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path


def free_port() -> int:
    """A free TCP port for the launch's rendezvous (concurrent launches collide on 29500)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def visible_gpus() -> list[str]:
    """The GPUs this process sees, as ``CUDA_VISIBLE_DEVICES`` entries a child can be given.

    Under a scheduler that sets ``CUDA_VISIBLE_DEVICES=2,3`` (Slurm, say), GPU 0 here is
    physical GPU 2: a worker pinned to "0" must get "2".
    """
    import torch

    count = torch.cuda.device_count()
    parent = [g.strip() for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()]
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return parent[:count]
    return [str(i) for i in range(count)]


def check_device(device: str) -> None:
    """``--device cuda`` on a machine without one would quietly train on the CPU instead."""
    if device == "cuda" and not has_gpu():
        from objectives.errors import UserError

        raise UserError("--device cuda: this machine shows no CUDA device to torch")


def launch_command(module: str, args: list[str], processes: int = 1, device: str = "auto",
                   mixed_precision: str = "no", port: int | None = None
                   ) -> tuple[list[str], dict[str, str]]:
    """``accelerate launch`` of ``python -m module args`` and the environment it needs.

    On CPU, one process is ``--cpu``; several are real gloo DDP (``ACCELERATE_USE_CPU=1``
    with ``--multi_gpu``): ``--cpu --num_processes N`` would start one process, and
    ``--multi_gpu`` without ``ACCELERATE_USE_CPU`` would start N unsynchronised copies.
    """
    check_device(device)
    if device == "auto":
        device = "cuda" if has_gpu() else "cpu"
    env = dict(os.environ)
    env.update({"PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false",
                "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                "TRANSFORMERS_VERBOSITY": env.get("TRANSFORMERS_VERBOSITY", "error"),
                "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"})
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1",
           "--num_processes", str(processes), "--mixed_precision", mixed_precision,
           "--dynamo_backend", "no", "--main_process_port", str(port or free_port())]
    if device == "cpu":
        # Share the cores between processes instead of oversubscribing them.
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes)))
        if processes == 1:
            cmd.append("--cpu")
        else:
            env["ACCELERATE_USE_CPU"] = "1"
            cmd.append("--multi_gpu")
    elif processes > 1:
        cmd.append("--multi_gpu")
    cmd += ["-m", module, *args]
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(Path(__file__).resolve().parent.parent), env.get("PYTHONPATH")) if p)
    return cmd, env
