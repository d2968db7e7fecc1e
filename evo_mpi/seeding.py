"""Named, per-member, per-generation random streams derived from one seed.

Each stream depends only on (seed, purpose, keys), never on which rank or
process computes it, so any rank layout reproduces the same run.
"""

from __future__ import annotations

import numpy as np

# Purposes: distinct integers so streams never collide.
INIT = 1
TRAIN = 2
ENV = 3
EVAL = 4
SELECT = 5
EXPLORE = 6
ACTION = 7
MORPH = 8
MUTATE = 9
CHAMPION = 10  # the final evaluation's episodes (champion.json): never used for training or fitness
REPAIR = 11  # the donor a failed member copies
RECOVER = 12  # the fresh envs of a member after a failure


def derive_seed(seed: int, purpose: int, *keys: int) -> int:
    """A 31-bit seed for (seed, purpose, keys), usable by torch, numpy and gymnasium."""
    state = np.random.SeedSequence([seed, purpose, *keys]).generate_state(1, dtype=np.uint32)
    return int(state[0] & 0x7FFFFFFF)


def stream(seed: int, purpose: int, *keys: int) -> np.random.Generator:
    """A numpy Generator for (seed, purpose, keys)."""
    return np.random.default_rng(np.random.SeedSequence([seed, purpose, *keys]))
