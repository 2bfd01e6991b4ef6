"""The default executor: a process pool on this machine."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait

from auditgame.run.base import OnOutcome
from auditgame.run.task import Outcome, Task, run_task
from auditgame.run.workers import configure_worker, mp_context


class LocalExecutor:
    """Runs tasks in ``workers`` processes (default: the machine's cores), one torch thread
    each; with one worker it runs them in this process, which is easier to debug."""

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers or os.cpu_count() or 1

    def run(self, tasks: Sequence[Task], on_outcome: OnOutcome) -> None:
        if self.workers <= 1:
            configure_worker()
            for task in tasks:
                on_outcome(task, run_task(task))
            return
        with ProcessPoolExecutor(
            max_workers=self.workers, mp_context=mp_context(), initializer=configure_worker
        ) as pool:
            pending: dict[Future[Outcome], Task] = {}
            queue = list(tasks)
            try:
                # Keep the queue short so an interrupted run has little in flight to redo.
                while queue or pending:
                    while queue and len(pending) < 2 * self.workers:
                        task = queue.pop(0)
                        pending[pool.submit(run_task, task)] = task
                    finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in finished:
                        on_outcome(pending.pop(future), future.result())
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)
                raise
