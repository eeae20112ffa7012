"""The server's background tasks are referenced and supervised: a loop that fails is
logged and started again, instead of dying silently for the rest of the process."""

from __future__ import annotations

import asyncio

from recall_engine.serving.server import Tasks


def test_a_supervised_loop_that_raises_is_restarted_and_logged(capsys):
    runs: list[int] = []

    async def flaky() -> None:
        runs.append(len(runs))
        if len(runs) < 3:
            raise OSError("disk went away")

    async def main() -> None:
        tasks = Tasks()
        task = tasks.supervise("follow_others", flaky, backoff_s=0.01)
        await asyncio.wait_for(task, 5)
        await tasks.cancel_all()

    asyncio.run(main())
    assert runs == [0, 1, 2]
    out = capsys.readouterr()
    assert (out.out + out.err).count("background_task_failed") == 2


def test_spawned_tasks_are_kept_until_done_and_their_failures_logged(capsys):
    async def boom() -> None:
        raise RuntimeError("reload exploded")

    async def main() -> int:
        tasks = Tasks()
        task = tasks.spawn("sighup_reload", boom())
        held = len(tasks._tasks)
        await asyncio.gather(task, return_exceptions=True)
        await asyncio.sleep(0)
        return held

    assert asyncio.run(main()) == 1
    out = capsys.readouterr()
    assert "reload exploded" in out.out + out.err
