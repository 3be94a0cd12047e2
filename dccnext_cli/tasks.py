"""The task registry: classification and every dense task, by the name `--task` takes.

Commands derive their `--task` choices from `TASKS` and dispatch on the task object, never on its name. Each
task says which options of `train` and `eval` it honours (`honours`); the commands refuse any other option that
was given, by name and before any work (`check_options`), so that no option is silently ignored.
"""

from __future__ import annotations

from collections.abc import Iterable

from .classification.task import CLASSIFICATION_TASK, ClassificationTask
from .dense.tasks import DENSE_TASKS, DenseTask
from .errors import ConfigError

__all__ = ["TASKS", "Task", "get_task", "is_dense", "CLASSIFICATION_TASK", "check_options"]

Task = ClassificationTask | DenseTask

TASKS: dict[str, Task] = {CLASSIFICATION_TASK.name: CLASSIFICATION_TASK, **DENSE_TASKS}


def get_task(name: str) -> Task:
    """The registered task of that name, or one line naming the choices."""
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
    return TASKS[name]


def is_dense(task: Task) -> bool:
    """True for detection and segmentation tasks (their own engine, data and metrics)."""
    return isinstance(task, DenseTask)


def check_options(task: Task, command: str, given: Iterable[str]) -> None:
    """Refuse, in one line naming it, the first option given to `command` that `task` does not honour."""
    honoured = task.honours.get(command, frozenset())
    refused = sorted(option for option in given if option not in honoured)
    if refused:
        raise ConfigError(f"{command} --task {task.name} does not use {refused[0]}; remove it")
