"""How many CPUs the runtime may use: the default for ``numThread``.

``os.cpu_count()`` is the node's count, not the container's: a pod limited to 2 CPUs on a
64-core node that ran 64 generation threads would spend most of its quota spinning and be
throttled. The CPUs this process may run on (its affinity: a cpuset, the kubelet's static CPU
manager) and its cgroup's CPU quota (a pod's cpu limit) both bound the count. A pod with a cpu
request and no limit has no quota, yet may only count on its request when the node is busy: the
operator passes the request through the downward API (``ENV_CPU_REQUEST``, in millicores), and
without a quota it bounds the count instead.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Final

CGROUP_ROOT = Path("/sys/fs/cgroup")

ENV_CPU_REQUEST: Final = "SLM_CPU_REQUEST_MILLICORES"
"""The server container's cpu request in millicores (downward API ``requests.cpu``, divisor
``CPU_REQUEST_DIVISOR``); 0 or unset when the container requests none."""
CPU_REQUEST_DIVISOR: Final = "1m"


def usable_cpus(cgroup_root: Path = CGROUP_ROOT, environ: Mapping[str, str] | None = None) -> int:
    """The CPUs this process may run on, capped by its cgroup's quota, else by its cpu request
    (each rounded up); at least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    quota = _cgroup_quota(cgroup_root)
    if quota is None:
        quota = _cpu_request(os.environ if environ is None else environ)
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)


def _cpu_request(environ: Mapping[str, str]) -> float | None:
    """The container's cpu request in CPUs, from the downward API; None when absent."""
    try:
        millicores = int(environ.get(ENV_CPU_REQUEST, ""))
    except ValueError:
        return None
    return millicores / 1000 if millicores > 0 else None


def _cgroup_quota(root: Path) -> float | None:
    """CPUs' worth of quota per period (cgroup v2 ``cpu.max``, else v1's CFS files); None when
    unlimited or unreadable."""
    try:
        quota, _, period = (root / "cpu.max").read_text().partition(" ")
        if quota.strip() == "max":
            return None
        return int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    if quota_us <= 0 or period_us <= 0:  # -1: unlimited
        return None
    return quota_us / period_us
