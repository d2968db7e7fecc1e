"""The async scheduler's messages (a part of :class:`~evo_mpi.async_engine.AsyncEngine`).

Tickets from rank 0's budget, rows published to every rank, snapshots served
point to point from inside training, stop notices, shared experience, and
the drain at the end, all through one :class:`~evo_mpi.comm.Mailbox`.
"""

from __future__ import annotations

import pickle
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from .comm import Mailbox
from .records import HistoryRow
from .scheduler import EngineBase
from .status import Status

# Message tags (on the mailbox's own communicator).
TICKET_REQUEST, TICKET, RECORD, SNAPSHOT_REQUEST, SNAPSHOT, STOP, EXPERIENCE = range(21, 28)

#: Serve other ranks at most this often from inside training (seconds); bounds the polling cost.
POLL_S = 1e-3


@dataclass
class Snapshot:
    """A member's state exactly as it was when its published fitness was measured (record None: no state yet)."""

    record: HistoryRow | None
    state: np.ndarray
    aux: np.ndarray

    def wire(self) -> np.ndarray:
        """One uint8 message: header length, pickled record and sizes, state, aux."""
        header = np.frombuffer(pickle.dumps((self.record, self.state.nbytes, self.aux.nbytes)), dtype=np.uint8)
        size = np.array([header.nbytes], dtype=np.int64).view(np.uint8)
        return np.concatenate([size, header, self.state, self.aux])

    @staticmethod
    def from_wire(buf: np.ndarray) -> Snapshot:
        """Inverse of :meth:`wire` (views into ``buf``)."""
        n = int(buf[:8].view(np.int64)[0])
        record, state_n, aux_n = pickle.loads(buf[8 : 8 + n].tobytes())
        start = 8 + n
        return Snapshot(record, buf[start : start + state_n], buf[start + state_n : start + state_n + aux_n])


class AsyncMail(EngineBase):
    """Serving, tickets, publishing, fetching, the drain and shared experience: the layer of the async scheduler
    over :class:`EngineBase`.
    """

    snapshots: dict[int, Snapshot]
    receive_count: np.ndarray
    budget: int
    target_hit: bool
    failure_stop: str | None
    train_cpu_s: float
    publish_count: dict[int, int]

    def _init_mail(self) -> None:
        """The mailbox and the message counters (every rank, at start-up)."""
        self.box = Mailbox(self.comm)
        self._last_poll = 0.0
        self.stop_notice = False
        self.stops_sent = False
        self.stops_received = 0
        self.tickets = 0  # rank 0: intervals handed out (including those completed before a resume)
        self.wait_s = 0.0  # waiting for tickets and snapshots
        self.serve_s = 0.0
        self.served: list[dict[str, Any]] = []  # one entry per snapshot sent: to whom, when, while doing what
        self.experience_sent = 0  # --share-experience: messages sent to each other rank
        self.experience_received = np.zeros(self.comm.size, dtype=np.int64)  # ... and received from each rank
        self.shared_bytes = 0
        self.pending_experience: list[np.ndarray] = []
        self.share_s = 0.0  # packing and adding shared transitions

    def _take_record(self, record: HistoryRow) -> None:
        """A published row, own or received (the scheduler's)."""
        raise NotImplementedError

    # -- serving -------------------------------------------------------------------------------------
    def serve(self) -> None:
        """Answer every message that has arrived: records, snapshot and ticket requests, stop notices."""
        t0 = time.perf_counter()
        for source, tag, obj in self.box.incoming((RECORD, SNAPSHOT_REQUEST, TICKET_REQUEST, STOP)):
            if tag == RECORD:
                self._take_record(obj)
            elif tag == SNAPSHOT_REQUEST:
                wire = self._wire(int(obj))
                self.box.deliver_buffer(source, SNAPSHOT, wire)
                self.served.append(
                    {
                        "served": int(obj),
                        "to": source,
                        "bytes": wire.nbytes,
                        "unix": time.time(),
                        "during": self.activity,
                    }
                )
            elif tag == TICKET_REQUEST:
                self.box.send(source, TICKET, self._issue())
            else:
                self.stop_notice = True
                self.stops_received += 1
        if self.cfg.share_experience:
            for source, buf in self.box.incoming_buffers(EXPERIENCE):
                self._take_experience(source, buf)
        self.serve_s += time.perf_counter() - t0

    def _wire(self, member: int) -> np.ndarray:
        snap = self.snapshots.get(member)
        if snap is None:  # never measured yet: nothing to copy (the requester saw no record of it either)
            return Snapshot(None, np.empty(0, np.uint8), np.empty(0, np.uint8)).wire()
        return snap.wire()

    def _poll(self) -> bool:
        """Called by members at every env and optimizer step: serve now and then; True once a stop is due."""
        now = time.perf_counter()
        if now - self._last_poll >= POLL_S:
            self._last_poll = now
            self.serve()
        return self._stopping()

    def _stopping(self) -> bool:
        if self.should_stop() and not self.stops_sent:
            self.stops_sent = True  # tell every rank, so a signal to one process stops the whole job
            for r in range(self.comm.size):
                if r != self.comm.rank:
                    self.box.send(r, STOP, self.comm.rank)
        return self.stops_sent or self.stop_notice

    # -- the budget ----------------------------------------------------------------------------------
    def _issue(self) -> int:
        """Rank 0: hand out the next interval of the budget, or -1 when it is spent."""
        if self.tickets >= self.budget or self.target_hit or self.failure_stop is not None:
            return -1
        self.tickets += 1
        return self.tickets - 1

    def _claim(self) -> bool:
        t0 = time.perf_counter()
        if self.comm.rank == 0:
            ticket = self._issue()
        else:
            self.box.send(0, TICKET_REQUEST, self.comm.rank)
            ticket = int(self.box.receive(0, TICKET, self.serve))
        self.wait_s += time.perf_counter() - t0
        return ticket >= 0

    def _publish(self, record: HistoryRow) -> None:
        self._take_record(record)
        for r in range(self.comm.size):
            if r != self.comm.rank:
                self.box.send(r, RECORD, record)

    def _fetch(self, donor: int) -> Snapshot:
        """The donor's latest snapshot from the rank that owns it, which serves it while it trains."""
        self.activity = f"fetching member {donor}'s snapshot from rank {self.owner(donor)}"
        t0 = time.perf_counter()
        self.box.send(self.owner(donor), SNAPSHOT_REQUEST, donor)
        snap = Snapshot.from_wire(self.box.receive_buffer(self.owner(donor), SNAPSHOT, self.serve))
        self.wait_s += time.perf_counter() - t0
        return snap

    # -- shared experience ------------------------------------------------------------------------
    def _share_experience(self, m: int) -> None:
        """Member ``m``'s new transitions to the other local members now, and to every other rank without waiting."""
        t0 = time.perf_counter()
        rows = self.sharers[m].new_experience()
        for other in self.local_ids:
            if other != m:
                self.sharers[other].add_experience(rows)
        if self.comm.size > 1:
            message = np.concatenate([np.array([m], dtype=np.int64).view(np.uint8), rows])
            for r in range(self.comm.size):
                if r != self.comm.rank:
                    self.box.send_buffer(r, EXPERIENCE, message)
            self.experience_sent += 1
            self.shared_bytes += message.nbytes * (self.comm.size - 1)
        self.share_s += time.perf_counter() - t0

    def _take_experience(self, source: int, message: np.ndarray) -> None:
        """Another rank's member's transitions, kept until no local member is in the middle of an interval.

        Adding them to a buffer that its member is filling would split the
        member's own rows of the interval, which it shares as one block.
        """
        self.pending_experience.append(message[8:])
        self.experience_received[source] += 1

    def _apply_experience(self) -> None:
        """Received transitions into every local member's replay buffer (between intervals)."""
        t0 = time.perf_counter()
        for rows in self.pending_experience:
            for m in self.local_ids:
                self.sharers[m].add_experience(rows)
        self.pending_experience.clear()
        self.share_s += time.perf_counter() - t0

    def _drain(self, ends: list[dict[str, Any]]) -> None:
        """Receive every record and stop notice still in flight, so history is complete and nothing is left over."""
        expected = np.zeros(self.population, dtype=np.int64)
        for e in ends:
            for m, n in e["published"].items():
                expected[int(m)] = n
        stops = sum(1 for r, e in enumerate(ends) if e["stops"] and r != self.comm.rank)
        experience = np.array([0 if r == self.comm.rank else e["experience"] for r, e in enumerate(ends)])

        def pending() -> bool:
            return (
                bool((self.receive_count < expected).any())
                or self.stops_received < stops
                or bool((self.experience_received < experience).any())
            )

        while pending():
            for _, tag, obj in self.box.incoming((RECORD, STOP)):
                if tag == RECORD:
                    self._take_record(obj)
                else:
                    self.stops_received += 1
            for source, buf in self.box.incoming_buffers(EXPERIENCE):
                self._take_experience(source, buf)
            if pending():
                time.sleep(1e-3)

    def _write_summary(self, status: Status, t_end: float, drain_s: float) -> None:
        """The rank's last timings rows: where its time went, and every snapshot it served."""
        summary: dict[str, Any] = {
            "rank": self.comm.rank,
            "summary": True,
            "first_train_unix": self.first_train_unix,
            "end_unix": t_end,
        }
        summary |= {"train_cpu": self.train_cpu_s, "wait_s": self.wait_s, "serve_s": self.serve_s, "drain_s": drain_s}
        summary |= {"intervals": sum(self.publish_count.values()), "shared_bytes": self.shared_bytes}
        summary |= {"share_s": self.share_s, "status": status}
        self.timings.write([summary] + [{"rank": self.comm.rank, **entry} for entry in self.served])
