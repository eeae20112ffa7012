"""The host's requests in flight, summed over the serving processes of ``serve
--processes N`` through the slots file in the group's folder. Real processes: each
worker below is a separate Python interpreter that maps the same file."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import pytest

from recall_engine.serving.admission import Admission
from recall_engine.serving.host_load import SLOTS_FILE, WINDOW_S, HostLoad, create_slots
from recall_engine.serving.workers import GROUP_DIR_ENV, INDEX_ENV

# a worker: joins the group as process INDEX, publishes COUNT, says so, and waits
WORKER = """
import sys
from recall_engine.serving.host_load import HostLoad
load = HostLoad.of_process()
assert load.shared
load.publish(int(sys.argv[1]))
print(load.total(), flush=True)
sys.stdin.readline()
"""


def start_worker(group, index: int, count: int) -> tuple[subprocess.Popen[str], int]:
    env = {**os.environ, GROUP_DIR_ENV: str(group), INDEX_ENV: str(index)}
    proc = subprocess.Popen(
        [sys.executable, "-c", WORKER, str(count)],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


def stop(proc: subprocess.Popen[str]) -> None:
    proc.kill()
    proc.wait(10)


def test_every_process_of_the_group_sees_the_others_requests(tmp_path):
    create_slots(tmp_path, 3)
    first, seen_by_first = start_worker(tmp_path, 0, 2)
    try:
        second, seen_by_second = start_worker(tmp_path, 1, 3)
        try:
            assert seen_by_first == 2 and seen_by_second == 5
            mine = HostLoad(tmp_path / SLOTS_FILE, 2)
            mine.publish(1)
            assert mine.total() == 6
        finally:
            stop(second)
        # killed with 3 in flight: its slot keeps them (the host looks busier, which
        # only means fewer fan-outs) until the worker that replaces it starts
        assert mine.total() == 6
        again, seen = start_worker(tmp_path, 1, 0)
        try:
            assert seen == 3 and mine.total() == 3
        finally:
            stop(again)
    finally:
        stop(first)


def test_admission_publishes_its_requests_in_flight(tmp_path):
    load = HostLoad(create_slots(tmp_path, 2), 1)
    other = HostLoad(tmp_path / SLOTS_FILE, 0)
    admission = Admission(4, host=load)
    assert admission.enter(2) == 2
    assert other.total() == 2
    admission.leave(1, 0.001)
    assert other.total() == 1
    admission.leave(1, 0.001)
    assert other.total() == 0


def test_a_request_waiting_in_the_admissions_line_counts_too(tmp_path):
    """It will want the cores as soon as it is admitted: a host whose processes each
    run one request and hold one in line is not idle."""
    load = HostLoad(create_slots(tmp_path, 2), 1)
    other = HostLoad(tmp_path / SLOTS_FILE, 0)

    async def scenario() -> None:
        admission = Admission(1, queue_s=1.0, host=load)
        await admission.wait(10)
        waiter = asyncio.ensure_future(admission.wait(10))
        for _ in range(100):
            await asyncio.sleep(0.001)
            if other.total() == 2:
                break
        assert other.total() == 2 and admission.in_flight == 1  # one in, one in line
        admission.leave(1, 0.001)  # its slot goes to the one in line
        await waiter
        assert other.total() == 1
        admission.leave(1, 0.001)
        assert other.total() == 0

    asyncio.run(scenario())


def test_a_process_busy_until_a_moment_ago_still_counts_on_average(tmp_path):
    other = HostLoad(create_slots(tmp_path, 2), 1)
    mine = HostLoad(tmp_path / SLOTS_FILE, 0)
    other.publish(1)
    time.sleep(2 * WINDOW_S)
    other.publish(0)
    # 1 - exp(-2) = 0.86 when it went idle, decaying with the window from then on
    assert mine.total() == 0 and mine.average() > 0.3
    time.sleep(10 * WINDOW_S)
    assert mine.average() < 0.01


def test_outside_a_group_a_process_counts_its_own_requests(tmp_path, monkeypatch):
    monkeypatch.delenv(GROUP_DIR_ENV, raising=False)
    alone = HostLoad.of_process()
    assert not alone.shared
    alone.publish(3)
    assert alone.total() == 3
    # a group folder without the file (a parent of an older release): alone as well
    monkeypatch.setenv(GROUP_DIR_ENV, str(tmp_path))
    monkeypatch.setenv(INDEX_ENV, "0")
    assert not HostLoad.of_process().shared


def test_a_slots_file_without_a_slot_for_the_process_is_refused_naming_it(tmp_path):
    path = create_slots(tmp_path, 2)
    with pytest.raises(ValueError, match=f"{SLOTS_FILE}.*no slot for process 2"):
        HostLoad(path, 2)
