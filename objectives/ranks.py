"""How the processes of one trial exchange data and agree that it succeeded.

A trial with several processes (``--gpus-per-trial``, ``--processes``) must fail on every
process together: if one raised and went on to the next trial while the others waited in a
collective, every later collective would be paired with the wrong one (a broadcast ``None``
read as STOP, rank 0's next job read as the rows) or wait for the backend's timeout.

The rule: every exchange of a trial is an all-gather of each process's ``(rank, final, error,
payload)`` (:func:`exchange`), and a process that fails goes straight to the trial's *final*
exchange (:func:`finish`). The other processes meet it at their next exchange, see its error,
and raise :class:`RankFailed`; if that error came from a final exchange, they have now been
paired with it and end the trial without one of their own (``ended``). So each process takes
part in the same number of exchanges per trial, whatever fails where.
"""

from __future__ import annotations

from typing import Any


class RankFailed(RuntimeError):
    """Another process of the trial failed; this one fails the trial with its reason."""

    def __init__(self, reason: str, ended: bool) -> None:
        super().__init__(reason)
        self.ended = ended  # paired with the failing process's final exchange already


def describe(err: BaseException) -> str:
    """The reason recorded for a failed trial (:func:`objectives.errors.failure_reason`);
    another process's failure as this one was told it."""
    from objectives.errors import failure_reason

    return str(err) if isinstance(err, RankFailed) else failure_reason(err)


def broadcast(accelerator: Any, value: Any) -> Any:
    """The main process's ``value`` on every process (between trials: the next job)."""
    if accelerator.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value], from_process=0)[0]


def exchange(accelerator: Any, payload: Any = None, error: BaseException | None = None
             ) -> list[Any]:
    """Every process's ``payload``, in rank order, once every process has arrived.

    ``error``: this process failed (its payload is ignored). If any process failed, every
    process raises: the failed one its own ``error``, the others :class:`RankFailed`.
    """
    if accelerator.num_processes == 1:
        if error is not None:
            raise error
        return [payload]
    from accelerate.utils import gather_object

    entries = gather_object([(accelerator.process_index, False,
                              None if error is None else describe(error), payload)])
    failed = [(rank, final, reason) for rank, final, reason, _ in entries if reason is not None]
    if failed:
        if error is not None:
            raise error
        rank, _, reason = failed[0]
        raise RankFailed(f"process {rank} of the trial failed: {reason}",
                         ended=any(final for _, final, _ in failed))
    return [p for _, _, _, p in entries]


def finish(accelerator: Any, error: BaseException | None) -> str | None:
    """The trial's last exchange: None if every process succeeded, else the first reason."""
    if accelerator.num_processes == 1:
        return None if error is None else describe(error)
    from accelerate.utils import gather_object

    entries = gather_object([(accelerator.process_index, True,
                              None if error is None else describe(error), None)])
    reasons = [(rank, reason) for rank, _, reason, _ in entries if reason is not None]
    if not reasons:
        return None
    if error is not None:
        return describe(error)
    rank, reason = reasons[0]
    return f"process {rank} of the trial failed: {reason}"
