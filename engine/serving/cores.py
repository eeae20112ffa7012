"""How many server processes a host runs by default: ``serve --processes auto``.

Python serves about one core per process (the GIL), so one process per usable core is
what a host can use. Usable means the CPU affinity mask (``taskset``, a cpuset) lowered
by a cgroup CPU quota (a container's ``cpu`` limit, cgroup v2 ``cpu.max`` or v1
``cpu.cfs_quota_us``), rounded down: a 1.5-CPU limit serves one process, as two would
be throttled. At most :data:`AUTO_MAX` processes: each loads every channel (about
200 MiB on the demo), so a large host gets a bounded count unless asked for more. One
process off Linux (see :func:`auto_processes`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = ["AUTO_MAX", "auto_processes", "usable_cores"]

#: The most processes ``--processes auto`` starts (``--processes N`` sets any count).
AUTO_MAX = 8

_CGROUP_ROOT = Path("/sys/fs/cgroup")


def auto_processes(cores: int | None = None, platform: str = sys.platform) -> int:
    """Server processes for ``--processes auto``: one per usable core, 1 to :data:`AUTO_MAX`;
    1 off Linux, whose kernel alone spreads a shared port's connections over the
    processes (elsewhere ``SO_REUSEPORT`` does not balance them)."""
    if not platform.startswith("linux"):
        return 1
    return max(1, min(AUTO_MAX, usable_cores() if cores is None else cores))


def usable_cores(cgroup_root: Path = _CGROUP_ROOT, proc_cgroup: Path | None = None) -> int:
    """Cores this process may run on: its affinity mask, lowered by a cgroup CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup_root, proc_cgroup or Path("/proc/self/cgroup"))
    if quota is not None:
        cores = min(cores, int(quota))
    return max(cores, 1)


def cgroup_cpu_quota(cgroup_root: Path, proc_cgroup: Path) -> float | None:
    """The tightest CPU quota, in CPUs, on this process's cgroup and its ancestors; None
    when there is none (or no cgroup file system to read)."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    quotas: list[float] = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # cgroup v2: the unified hierarchy
            quotas += _walk(cgroup_root, path, _v2_quota)
        elif "cpu" in controllers.split(","):  # cgroup v1: the cpu controller's tree
            for mount in (cgroup_root / "cpu,cpuacct", cgroup_root / "cpu"):
                if mount.is_dir():
                    quotas += _walk(mount, path, _v1_quota)
                    break
    return min(quotas) if quotas else None


def _walk(mount: Path, path: str, read) -> list[float]:
    """Quotas from the cgroup at ``path`` under ``mount`` up to the mount's root (in a
    container the namespace makes the container's own cgroup the root)."""
    out = []
    parts = [p for p in path.split("/") if p]
    for depth in range(len(parts), -1, -1):
        quota = read(mount.joinpath(*parts[:depth]))
        if quota is not None:
            out.append(quota)
    return out


def _v2_quota(folder: Path) -> float | None:
    try:
        quota, _, period = (folder / "cpu.max").read_text().strip().partition(" ")
        return None if quota == "max" else int(quota) / int(period or 100000)
    except (OSError, ValueError, ZeroDivisionError):
        return None


def _v1_quota(folder: Path) -> float | None:
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None
