"""How the sync scheduler moves state between ranks (a part of :class:`~evo_mpi.engine.Engine`).

After each generation's decision every rank takes part: losers receive their
donors' packed states (``--backend p2p``: ``Send``/``Recv``; ``collective``:
``Bcast``), then the auxiliary state (VecNormalize statistics, replay buffers),
then each member that mutates takes its new hyperparameters. With
``--share-experience`` every member's new transitions reach every other
member's replay buffer through one ``Allgatherv``.
"""

from __future__ import annotations

import numpy as np

from .scheduler import EngineBase
from .space import Value
from .table import FitnessTable

#: The auxiliary state of a member that has none to move.
_NO_AUX = np.zeros(0, dtype=np.uint8)


class SyncExchange(EngineBase):
    """State moves and shared experience: the layer of the sync scheduler over :class:`EngineBase`."""

    def _exploit(self, donors: dict[int, int], table: FitnessTable, new_hparams: list[dict[str, Value]]) -> None:
        """Losers take their winner's state; then every local member that mutates takes its new hyperparameters.

        A loser first takes its winner's architecture (:meth:`match_layout`), so
        the state arrives in a buffer of the winner's size; winners that also
        lose are packed before that. Mutations (a new architecture grown from
        the received weights, weight noise) come only after every local loser
        has its copy, so no loser copies another's mutation.
        """
        me = self.comm.rank
        changed = [m for m in self.local_ids if m in donors or m in self.mutations or new_hparams[m] != self.hparams[m]]
        if donors:  # every rank takes part: a rank with no loser may hold a winner
            losers = [loser for loser in sorted(donors) if self.owner(loser) == me]
            held = {
                w: self.members[w].pack().copy() for w in set(donors.values()) if self.owner(w) == me and w in donors
            }
            for loser in losers:
                self.members[loser].match_layout(self.hparams[donors[loser]])
            first_loser: dict[int, int] = {}  # winner -> the local loser that receives its state in place
            for loser in losers:
                first_loser.setdefault(donors[loser], loser)

            def pack(w: int) -> np.ndarray:
                return held[w] if w in held else self.members[w].pack()

            def size_of(w: int) -> int:
                return pack(w).nbytes if self.owner(w) == me else self.members[first_loser[w]].state_nbytes

            buffers = self.comm.move(
                donors,
                self.owner,
                pack,
                size_of,
                self.cfg.backend,
                receive_into=lambda w: self.members[first_loser[w]].receive_buffer() if w in first_loser else None,
            )
            # VecNormalize statistics and (optionally) replay buffers move in a second, separate exchange.
            replay = self.cfg.copy_replay_buffer
            aux_nbytes = self.members[self.local_ids[0]].aux_nbytes(replay)
            aux: dict[int, np.ndarray] = {}
            if aux_nbytes:
                aux = self.comm.move(
                    donors, self.owner, lambda w: self.members[w].pack_aux(replay), aux_nbytes, self.cfg.backend
                )
            for loser in losers:
                winner = donors[loser]
                self._adopt(
                    loser,
                    buffers[winner],
                    aux.get(winner, _NO_AUX),
                    table.scores(winner),
                    table.lengths(winner),
                    table.returns(winner) if table.objective else None,
                )
        for m in changed:
            self._take_hparams(m, new_hparams[m], self.mutations.get(m))

    def _share_experience(self) -> int:
        """Every member's new transitions into every other member's replay buffer; returns the bytes gathered.

        One ``Allgatherv`` of contiguous buffers; each member then appends the
        others' rows in member order, whatever the rank layout, so the buffers
        (and the run) are the same on any layout and after a resume.
        """
        parts = self.comm.allgather_parts([self.sharers[m].new_experience() for m in self.local_ids])
        for m in self.local_ids:
            for k, part in enumerate(parts):
                if k != m:
                    self.sharers[m].add_experience(part)
        return int(sum(p.nbytes for p in parts))
