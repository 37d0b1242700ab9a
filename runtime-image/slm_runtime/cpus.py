"""How many CPUs the runtime may use: the default for ``numThread``.

``os.cpu_count()`` is the node's count, not the container's: a pod limited to 2 CPUs on a
64-core node that ran 64 generation threads would spend most of its quota spinning and be
throttled. The CPUs this process may run on (its affinity: a cpuset, the kubelet's static CPU
manager) and its cgroup's CPU quota (a pod's cpu limit) both bound the count.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def usable_cpus(cgroup_root: Path = CGROUP_ROOT) -> int:
    """The CPUs this process may run on, capped by its cgroup's quota (rounded up); at least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    quota = _cgroup_quota(cgroup_root)
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)


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
