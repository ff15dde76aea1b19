"""How the processes smearlab starts use the CPU: how many threads, and how idle threads wait.

PyTorch's CPU kernels run on OpenMP threads, and by default an OpenMP thread that waits for work
spins for a while before it sleeps. Alone on a machine that costs nothing; beside another busy
process (a second notebook, a sweep job, anyone's job on a shared machine) the spinning threads
take the cores the others need, and each side slows the other down far more than its share of
the CPU explains (``benchmarks/threads.py`` measures it). Every kernel the report runner starts,
every sweep job and every benchmark therefore runs with ``OMP_WAIT_POLICY=PASSIVE`` (idle threads
sleep), and with a thread count only when one is asked for (``smearlab report --threads N``).
These must be in the environment before the process loads PyTorch: they are set where the
processes are started, not inside them.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator


def thread_environment(threads: int | None = None) -> dict[str, str]:
    """The environment variables a process smearlab starts gets.

    Parameters
    ----------
    threads : threads per process (OpenMP and MKL); None leaves PyTorch's default (one per core).

    Returns
    -------
    dict
        ``OMP_WAIT_POLICY=PASSIVE``, and ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` with ``threads``.
    """
    env = {"OMP_WAIT_POLICY": "PASSIVE"}
    if threads is not None:
        if isinstance(threads, bool) or int(threads) < 1:
            raise ValueError(f"threads must be a positive number, got {threads!r}")
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(int(threads))
    return env


@contextlib.contextmanager
def started_with(threads: int | None = None) -> Iterator[dict[str, str]]:
    """Processes started inside the block inherit :func:`thread_environment` (a wait policy the
    user already set in the environment is kept, and so is a thread count unless ``threads``
    asks for one); the environment is restored afterwards.

    Parameters
    ----------
    threads : as for :func:`thread_environment`.
    """
    env = thread_environment(threads)
    # keep what the user set: the wait policy always (threads=N replaced an ACTIVE policy too), the
    # thread counts unless threads asks for others
    env = {k: v for k, v in env.items() if k not in os.environ or (threads is not None and k != "OMP_WAIT_POLICY")}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield env
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
