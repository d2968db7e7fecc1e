"""Test order for the two workers of ``pytest -n 2 --dist loadfile`` (set in pyproject.toml).

xdist hands whole files to the workers in collection order, so each file's module fixtures (the
shared reference runs) run once. The files that take longest go first, so that both workers end
at about the same time; the SLURM files, which mostly wait on SLURM's timers, lead.
"""

from __future__ import annotations

import pytest

#: Files in the order they are handed out (longest first, from ``--durations``); others follow.
LONGEST_FIRST = ("test_two_nodes", "test_algos_mpi", "test_slurm", "test_resume", "test_async", "test_mpi")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))  # stable: the order within a file stays
