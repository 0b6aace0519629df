"""A small step engine that honours :class:`models.base.StepEngine`, for scheduler tests.

An item is ``(steps, value)``: it finishes after ``steps`` steps with ``10 * value``.
A negative value cannot start (its admission fails), a value of 13 fails when it
finishes, and a step while ``explode`` is set fails as a broken device would. The
engine records everything the scheduler made it do, and checks the contract as it
goes: an item is only admitted into a free row, and only one thread ever enters.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

Item = tuple[int, int]
UNLUCKY = 13


@dataclass
class Running:
    item: Item
    steps_done: int = 0


@dataclass
class FakeStepEngine:
    rows: int = 4
    admission_batch: int = 1
    step_seconds: float = 0.0
    gate: threading.Event = field(default_factory=threading.Event)
    parked: threading.Event = field(default_factory=threading.Event)
    """Set while a step waits at the closed gate."""
    explode: bool = False
    table: dict[int, Running] = field(default_factory=dict)
    admitted: list[tuple[int, Item]] = field(default_factory=list)
    admissions: list[list[int]] = field(default_factory=list)
    """The rows of each ``admit`` call."""
    released: list[int] = field(default_factory=list)
    steps: int = 0
    peak: int = 0
    threads: set[int] = field(default_factory=set)
    violations: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.gate.set()

    @property
    def running(self) -> int:
        return len(self.table)

    def load(self) -> None:
        self.threads.add(threading.get_ident())

    def admit(self, assignments: Sequence[tuple[int, Item]]) -> list[tuple[int, BaseException]]:
        self.threads.add(threading.get_ident())
        failed: list[tuple[int, BaseException]] = []
        with self.lock:
            self.admissions.append([row for row, _ in assignments])
            for row, item in assignments:
                if row in self.table or not 0 <= row < self.rows:
                    self.violations.append(f"row {row} admitted while not free")
                if item[1] < 0:
                    failed.append((row, ValueError(f"bad item {item}")))
                    continue
                self.table[row] = Running(item)
                self.admitted.append((row, item))
            self.peak = max(self.peak, len(self.table))
        return failed

    def step(self) -> list[tuple[int, int | BaseException]]:
        self.threads.add(threading.get_ident())
        if not self.gate.is_set():
            self.parked.set()
        self.gate.wait(timeout=60)
        self.parked.clear()
        if self.step_seconds:
            threading.Event().wait(self.step_seconds)
        if self.explode:
            raise RuntimeError("device lost")
        done: list[tuple[int, int | BaseException]] = []
        with self.lock:
            self.steps += 1
            for row, running in list(self.table.items()):
                running.steps_done += 1
                steps, value = running.item
                if running.steps_done >= steps:
                    del self.table[row]
                    outcome = ValueError("unlucky") if value == UNLUCKY else 10 * value
                    done.append((row, outcome))
        return done

    def release(self, rows: Sequence[int]) -> None:
        self.threads.add(threading.get_ident())
        with self.lock:
            for row in rows:
                if self.table.pop(row, None) is not None:
                    self.released.append(row)
