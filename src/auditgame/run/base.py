"""The executor interface: run tasks, report each outcome as soon as it is known."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from auditgame.run.task import Outcome, Task

OnOutcome = Callable[[Task, Outcome], None]


class Executor(Protocol):
    """Runs ``tasks`` and calls ``on_outcome`` in the calling process, once per task, in the
    order they finish. An executor never sees a key or a secret: tasks carry neither."""

    def run(self, tasks: Sequence[Task], on_outcome: OnOutcome) -> None: ...
