"""avalanche-mm: multimodal continual learning for Avalanche.

Subpackages (imported lazily so that ``import avalanche_mm`` stays light):
``data``, ``benchmarks``, ``models``, ``strategies``, ``metrics``,
``experiments``.

Importing ``avalanche_mm`` before ``torch`` sets ``OMP_WAIT_POLICY=PASSIVE``
(unless the variable is already set): OpenMP worker threads then sleep instead
of spin-waiting between parallel regions, which on a busy machine (other
processes on the same cores) makes training 2-10x faster. The OpenMP runtime
reads the variable once, when torch loads it, so the setting only helps if
``avalanche_mm`` comes first; otherwise call :func:`limit_threads` (see
docs/trust.md, "Busy machines").
"""

import os as _os
import sys as _sys

if "torch" not in _sys.modules:
    _os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"


def limit_threads(n=None):
    """Cap torch's intra-op threads at runtime (works after ``import torch`` too).

    Spin-waiting costs most when torch runs more threads than the cores it
    really gets. ``n`` defaults to the CPUs this process may use
    (``os.sched_getaffinity``) minus those kept busy by other processes
    (the 1-minute load average), at least 1.

    :param n: the number of threads, or None for the estimate above.
    :return: the number of threads set.
    """
    import torch

    if n is None:
        try:
            cpus = len(_os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover - not Linux
            cpus = _os.cpu_count() or 1
        try:
            busy = int(_os.getloadavg()[0])
        except OSError:  # pragma: no cover
            busy = 0
        n = max(1, cpus - busy)
    n = int(n)
    if n < 1:
        raise ValueError(f"limit_threads: n must be >= 1, got {n}.")
    torch.set_num_threads(n)
    return n


__all__ = ["__version__", "limit_threads"]
