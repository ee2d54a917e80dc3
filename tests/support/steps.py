"""Counting a Trio task's steps: how the tests see that a path takes no task switch of its own."""

from __future__ import annotations

import trio


class TaskSteps(trio.abc.Instrument):
    """Counts the steps of the task named `name` (add it with `trio.lowlevel.add_instrument`)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.count = 0

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if task.name == self.name:
            self.count += 1
