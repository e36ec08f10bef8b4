"""One per-image runner for the resumable, shardable stages (propose, crop, detect).

A stage keeps one stored result per image, under a content key (what the result was computed from).
A run takes the images of its shard (:func:`rcnn.scale.shard_of`), reuses every stored result that is
still valid, computes the rest with :func:`rcnn.scale.run_tasks` (in this process, a process pool or as
Ray tasks) and stores each result here as it arrives; the stage then assembles its report from what is
stored. Each stage supplies the pieces as a :class:`Stage`: the check of a stored result, the task, and
the step that stores a result (and the one that reports a Ray task that failed for good).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from tqdm import tqdm

from .scale import Shard, run_tasks, shard_of

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class Outcome(Generic[R]):
    """What one task returns: its value, or (``value`` None) the error of an image that could not be used."""

    value: R | None = None
    error: str = ""  # one line naming the image and the problem; "" when there is none
    seconds: float = 0.0  # time the task took, in seconds


@dataclass
class Todo(Generic[T]):
    """A stage's images of this run (its shard, in input order), split by whether their stored result is valid."""

    items: list[T]  # this shard's items (every item without a shard), in input order
    todo: list[T]  # those to compute
    reused: list[T] = field(default_factory=list)  # those whose stored result is reused


@dataclass
class Stage(Generic[T]):
    """The pieces of one resumable per-image stage.

    ``task`` is a module-level function (it is pickled by name for process pools and Ray) called as
    ``task(shared, item)``; it returns per-image problems rather than raising them. ``collect(item, result)``
    runs in this process, in completion order, and stores the result (it is what makes a result reusable).
    """

    name: str  # the progress bar's label
    task: Callable[[Any, T], Any]
    collect: Callable[[T, Any], None]
    lost: Callable[[T, str], None]  # a Ray task that failed for good (its worker died again and again)
    valid: Callable[[T], bool] = lambda item: False  # whether the stored result of ``item`` is valid (reused)

    def plan(self, items: Sequence[T], shard: Shard | None = None, key: Callable[[T], Any] = str) -> Todo[T]:
        """The items of ``shard`` (:func:`rcnn.scale.shard_of` by ``key``), split into reused and to compute."""
        mine = shard_of(items, shard, key=key)
        todo, reused = [], []
        for item in mine:
            (reused if self.valid(item) else todo).append(item)
        return Todo(mine, todo, reused)

    def run(self, shared: Any, todo: Sequence[T], done: int = 0, workers: int = 1, ray: str | None = None,
            progress: bool = True) -> None:
        """Compute ``todo`` and collect each result, with a progress bar of ``done + len(todo)`` images.

        Args:
            shared: what every task gets (settings, a model): sent once per process, or put in Ray's store once.
            done: images already done (reused), shown as the bar's start.
            workers: processes without Ray (1: in this process); ray: a Ray address or ``local`` (None: no Ray).
            progress: show the bar (on a terminal only, as tqdm decides); False: never.
        """
        bar = tqdm(total=done + len(todo), initial=done, desc=self.name, unit="img", disable=None if progress else True)
        try:
            run_tasks(self.task, shared, todo, self.collect, workers=workers, ray=ray, on_error=self.lost, bar=bar)
        finally:
            bar.close()
