"""The smallest cohort a worker takes part in: constants the command line shows too.

Apart from ``workers.party`` (which imports torch) so that ``fedsim --help``
can print the defaults without importing torch.
"""

from __future__ import annotations

__all__ = ["MIN_COHORT", "SERVED_MIN_COHORT", "default_min_cohort"]

MIN_COHORT = 2  # no sum of fewer contributions is ever revealed: it would be an update
SERVED_MIN_COHORT = 3  # `fedsim worker serve`'s floor unless its operator lowers it


def default_min_cohort(clients: int) -> int:
    """The minimum cohort of a run or round of ``clients``: 3, or every client if fewer."""
    return max(MIN_COHORT, min(SERVED_MIN_COHORT, clients))
