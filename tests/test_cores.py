"""``serve --processes auto`` (the default): one server process per usable core, read
from the CPU affinity mask and a cgroup CPU quota (serving/cores.py). The cgroup trees
here are written under tmp_path in the kernel's own file formats."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from recall_engine.cli.main import main
from recall_engine.serving.cores import AUTO_MAX, auto_processes, cgroup_cpu_quota, usable_cores


def _v2(root: Path, path: str, cpu_max: dict[str, str]) -> Path:
    """A cgroup v2 tree: ``cpu.max`` per folder, and the /proc/self/cgroup line."""
    for folder, text in cpu_max.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / "cpu.max").write_text(text + "\n")
    proc = root.parent / "proc-self-cgroup"
    proc.write_text(f"0::{path}\n")
    return proc


def test_a_v2_quota_counts_in_whole_cpus_rounded_down(tmp_path):
    root = tmp_path / "cg"
    proc = _v2(root, "/pod", {"pod": "150000 100000"})
    assert cgroup_cpu_quota(root, proc) == 1.5
    assert usable_cores(root, proc) == 1  # two processes would be throttled


def test_the_tightest_quota_on_the_way_to_the_root_counts(tmp_path):
    root = tmp_path / "cg"
    proc = _v2(
        root, "/kubepods/pod/ctr", {"kubepods": "100000 100000", "kubepods/pod/ctr": "max 100000"}
    )
    assert cgroup_cpu_quota(root, proc) == 1.0


def test_no_quota_leaves_the_affinity_mask(tmp_path):
    root = tmp_path / "cg"
    proc = _v2(root, "/", {"": "max 100000"})
    assert cgroup_cpu_quota(root, proc) is None
    assert usable_cores(root, proc) == len(os.sched_getaffinity(0))
    missing = tmp_path / "no-such-file"
    assert cgroup_cpu_quota(root, missing) is None
    assert usable_cores(root, missing) == len(os.sched_getaffinity(0))


def test_a_v1_cfs_quota(tmp_path):
    root = tmp_path / "cg"
    folder = root / "cpu,cpuacct" / "docker" / "abc"
    folder.mkdir(parents=True)
    (folder / "cpu.cfs_quota_us").write_text("300000\n")
    (folder / "cpu.cfs_period_us").write_text("100000\n")
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text("4:memory:/docker/abc\n2:cpu,cpuacct:/docker/abc\n1:name=systemd:/\n")
    assert cgroup_cpu_quota(root, proc) == 3.0
    (folder / "cpu.cfs_quota_us").write_text("-1\n")  # v1's "no limit"
    assert cgroup_cpu_quota(root, proc) is None


def test_a_quota_file_that_does_not_parse_is_no_quota(tmp_path):
    root = tmp_path / "cg"
    proc = _v2(root, "/x", {"x": "garbage"})
    assert cgroup_cpu_quota(root, proc) is None


def test_auto_is_one_per_core_from_one_to_the_cap():
    assert auto_processes(1) == 1
    assert auto_processes(2) == 2
    assert auto_processes(AUTO_MAX + 40) == AUTO_MAX
    assert auto_processes(0) == 1
    assert 1 <= auto_processes() <= AUTO_MAX
    assert auto_processes(4, platform="darwin") == 1  # SO_REUSEPORT balances on Linux only


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5"])
def test_serve_refuses_a_process_count_that_is_not_auto_or_a_whole_number(value, capsys):
    with pytest.raises(SystemExit) as e:
        main(["serve", "--processes", value])
    assert e.value.code == 2
    assert "--processes" in capsys.readouterr().err
