"""A cancellation token for tests of work that stops when its client hangs up."""

from __future__ import annotations


class StopAfter:
    """A cancellation token that turns set on its ``looks``-th look: a client hanging up."""

    def __init__(self, looks: int) -> None:
        self.after = looks
        self.looks = 0

    def is_set(self) -> bool:
        self.looks += 1
        return self.looks >= self.after
