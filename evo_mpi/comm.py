"""The only module that touches mpi4py.

A narrow interface (:class:`Comm`) with a single-process path that needs no
MPI at all, and two ways to move member state between ranks:

* ``p2p``: only ranks owning a needed donor send (``Isend``), only ranks
  owning a loser receive (``Irecv``); one message per (donor, receiving rank).
* ``collective``: every needed donor is broadcast from its owner (``Ibcast``).

State travels as contiguous ``uint8`` numpy buffers through mpi4py's
upper-case (buffer) calls; nothing is pickled on that path. Waits poll
non-blocking requests and then sleep with a capped back-off, so a rank waiting
for slow peers does not burn a core.
"""

from __future__ import annotations

import os
import pickle
import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

try:  # pragma: no cover - exercised implicitly by every test
    from mpi4py import MPI

    _MPI_ERROR = ""
except Exception as exc:  # pragma: no cover - only without a loadable MPI library
    MPI = None  # type: ignore[assignment]
    _MPI_ERROR = f"{type(exc).__name__}: {exc}"

#: World-size variables set by MPI launchers (MPICH's Hydra and PMI-based srun, Open MPI).
_LAUNCHER_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE")

BACKENDS = ("p2p", "collective")


class ExchangeError(RuntimeError):
    """Two ranks disagree about what moves: a message of the wrong size, or member states of different layouts."""


def usable_cores() -> set[int]:
    """The CPU cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return set(os.sched_getaffinity(0))
    return set(range(os.cpu_count() or 1))


def launcher_world_size() -> int | None:
    """The number of processes the MPI launcher says it started, if a known launcher variable is set."""
    for name in _LAUNCHER_VARS:
        value = os.environ.get(name, "")
        if value.strip().isdigit():
            return int(value)
    return None


def launcher_mismatch(world_size: int) -> str | None:
    """Why this process sees a world of 1 while its launcher started several, or None if they agree.

    That happens when mpi4py is built against one MPI and the job is started
    by another MPI's ``mpiexec``: every process then runs alone, silently.
    """
    launched = launcher_world_size()
    if world_size != 1 or launched is None or launched <= 1:
        return None
    variable = next(v for v in _LAUNCHER_VARS if os.environ.get(v, "").strip().isdigit())
    library = MPI.Get_library_version().splitlines()[0].strip() if MPI is not None else "none"
    return (
        f"the MPI launcher started {launched} processes ({variable}={launched}), but MPI gives this one a world of "
        f"1 rank: mpi4py uses a different MPI ({library}) than the launcher. Start the job with the mpiexec of "
        "the MPI mpi4py was built with (python -c 'import mpi4py; print(mpi4py.get_config())'), or rebuild "
        "mpi4py against your MPI (pip install --no-binary mpi4py --force-reinstall mpi4py)"
    )


# Poll without sleeping this long before backing off. Synchronisation points
# (where a rank may wait seconds for slower peers) back off almost at once. Data
# movement happens after such a point, so its waits are the transfer itself, and
# MPI only progresses multi-step protocols (rendezvous, pipelined shared-memory
# copies, broadcast trees) while it is polled: a rank that sleeps mid-transfer
# stalls every chunk by its sleep. So a move polls (yielding the core) for up to
# 10 s, long enough for a 1 GB state at 100 MB/s. With 50 ms, one 120 MB state
# between 2 of 4 ranks on 2 cores took 2.9 s; now 68 ms (docs/benchmarks.md §6).
_SPIN_S = 2e-4
_MOVE_SPIN_S = 10.0
_MAX_SLEEP_S = 2e-3


class Comm:
    """Population communicator over ``MPI.COMM_WORLD`` or a single process."""

    def __init__(self, comm: Any | None = None) -> None:
        if comm is None and MPI is not None:
            comm = MPI.COMM_WORLD
        elif comm is None and any(int(os.environ.get(v, "1") or 1) > 1 for v in _LAUNCHER_VARS):
            raise RuntimeError(
                f"started by an MPI launcher but mpi4py cannot load MPI ({_MPI_ERROR}); "
                "install mpi4py against your MPI or the evo-mpi[mpich] extra"
            )
        self._comm = comm
        self.rank: int = comm.Get_rank() if comm is not None else 0
        self.size: int = comm.Get_size() if comm is not None else 1
        self._scratch: np.ndarray | None = None

    @property
    def uses_mpi(self) -> bool:
        """True when other ranks exist."""
        return self._comm is not None and self.size > 1

    # -- small, pickled metadata -------------------------------------------------
    def bcast_obj(self, obj: Any, root: int = 0) -> Any:
        """Broadcast a small picklable object; waiting ranks poll and sleep instead of spinning."""
        if not self.uses_mpi:
            return obj
        data = np.frombuffer(pickle.dumps(obj), dtype=np.uint8) if self.rank == root else None
        size = np.array([0 if data is None else data.size], dtype=np.int64)
        _wait([self._comm.Ibcast(size, root=root)])
        buf = data.copy() if data is not None else np.empty(int(size[0]), dtype=np.uint8)
        _wait([self._comm.Ibcast(buf, root=root)], _MOVE_SPIN_S)
        return obj if self.rank == root else pickle.loads(buf.tobytes())

    def allgather_obj(self, obj: Any) -> list[Any]:
        """Every rank's small picklable object, in rank order (start-up metadata only)."""
        return self._comm.allgather(obj) if self.uses_mpi else [obj]

    def ranks_on_node(self) -> int:
        """How many ranks share this rank's node (shared-memory communicator split)."""
        if not self.uses_mpi:
            return 1
        node = self._comm.Split_type(MPI.COMM_TYPE_SHARED)
        try:
            return int(node.Get_size())
        finally:
            node.Free()

    def local_rank(self) -> int:
        """The index of this rank among the ranks of its node: its rank in ``COMM_WORLD.Split_type(COMM_TYPE_SHARED)``.

        The same on every MPI and launcher (the split orders a node's ranks by
        their world rank); launcher variables such as ``MPI_LOCALRANKID`` are
        only a cross-check (:func:`evo_mpi.devices.launcher_local_rank`).
        """
        if not self.uses_mpi:
            return 0
        node = self._comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        try:
            return int(node.Get_rank())
        finally:
            node.Free()

    def node_usage(self) -> tuple[str, int, int]:
        """(host name, ranks on this node, cores usable by them): the union of the node's ranks' CPU affinities.

        The union, not this rank's own affinity: a scheduler that pins each rank
        to its own cores (SLURM's task binding) leaves every rank one core.
        """
        mine = sorted(usable_cores())
        if not self.uses_mpi:
            return socket.gethostname(), 1, len(mine)
        node = self._comm.Split_type(MPI.COMM_TYPE_SHARED)
        try:
            cores = set().union(*node.allgather(mine))
            return socket.gethostname(), int(node.Get_size()), len(cores)
        finally:
            node.Free()

    def any(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is true on any rank (polling, not spinning)."""
        if not self.uses_mpi:
            return bool(flag)
        send = np.array([1 if flag else 0], dtype=np.int32)
        recv = np.zeros(1, dtype=np.int32)
        _wait([self._comm.Iallreduce(send, recv, op=MPI.MAX)])
        return bool(recv[0])

    def barrier(self) -> None:
        """Wait for every rank (polling, not spinning)."""
        if self.uses_mpi:
            _wait([self._comm.Ibarrier()])

    def abort(self, code: int) -> None:
        """End every rank of the job now (used on an unhandled error)."""
        if self.uses_mpi:
            self._comm.Abort(code)

    # -- buffers -----------------------------------------------------------------
    def allgather(self, local: np.ndarray) -> np.ndarray:
        """Concatenate every rank's equally shaped float64 rows, in rank order."""
        local = np.ascontiguousarray(local, dtype=np.float64)
        if not self.uses_mpi:
            return local.copy()
        out = np.empty((self.size * local.shape[0],) + local.shape[1:], dtype=np.float64)
        _wait([self._comm.Iallgather(local, out)])
        return out

    def allgather_parts(self, parts: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Every rank's uint8 ``parts`` (the same number on every rank, any sizes), in rank order.

        The sizes travel first (one small ``Allgather``), then all parts in one
        ``Allgatherv`` of contiguous buffers: nothing is pickled and nothing
        goes through one rank. Used for shared experience.
        """
        parts = [np.ascontiguousarray(p, dtype=np.uint8).reshape(-1) for p in parts]
        if not self.uses_mpi:
            return parts
        mine = np.array([p.nbytes for p in parts], dtype=np.int64)
        sizes = np.empty(self.size * len(parts), dtype=np.int64)
        _wait([self._comm.Iallgather(mine, sizes)])
        per_rank = sizes.reshape(self.size, len(parts)).sum(axis=1)
        local = np.concatenate(parts) if parts else np.empty(0, dtype=np.uint8)
        out = np.empty(int(per_rank.sum()), dtype=np.uint8)
        displacements = np.concatenate([[0], np.cumsum(per_rank)[:-1]])
        _wait([self._comm.Iallgatherv(local, [out, per_rank.tolist(), displacements.tolist(), MPI.BYTE])], _MOVE_SPIN_S)
        bounds = np.concatenate([[0], np.cumsum(sizes)])
        return [out[bounds[i] : bounds[i + 1]] for i in range(sizes.size)]

    def move(
        self,
        donors: Mapping[int, int],
        owner: Callable[[int], int],
        pack: Callable[[int], np.ndarray],
        nbytes: int | Callable[[int], int],
        backend: str,
        receive_into: Callable[[int], np.ndarray | None] | None = None,
    ) -> dict[int, np.ndarray]:
        """Deliver each donor's packed state to every rank holding one of its losers.

        Args:
            donors: ``{loser: donor}`` over the whole population (same on all ranks).
            owner: Member id -> rank that holds it.
            pack: A *local* member's state as a contiguous uint8 buffer (may be a live view).
            nbytes: Size of every packed state, or donor -> the size of its state (members of different
                architectures); asked only for donors this rank packs or receives. Ranks that only relay a
                broadcast take the size from its header.
            backend: ``p2p`` or ``collective``.
            receive_into: Optional donor -> buffer of ``nbytes`` to receive that
                donor's state into (e.g. the state of one of its local losers), so
                no extra copy is needed; None means a fresh buffer.

        Returns:
            ``{donor: buffer}`` for every donor with a loser on this rank.
            Donors on this rank are packed locally, without MPI. A donor that is
            also a loser is copied before anything moves, so it hands on its
            pre-exploit state.

        """
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r} (expected one of {', '.join(BACKENDS)})")
        me = self.rank
        wanted = sorted({w for loser, w in donors.items() if owner(loser) == me})
        # (donor, destination rank) pairs that must cross ranks.
        remote = sorted({(w, owner(loser)) for loser, w in donors.items() if owner(w) != owner(loser)})
        to_send = sorted({w for w, dst in remote if owner(w) == me})
        size_of = nbytes if callable(nbytes) else (lambda _w: nbytes)
        packed = {}
        for w in sorted(set(wanted) | set(to_send)):
            if owner(w) == me:
                buf = pack(w)
                packed[w] = buf.copy() if w in donors else buf
                if buf.nbytes != size_of(w):
                    raise ValueError(f"member {w} packs {buf.nbytes} bytes, expected {size_of(w)}")
        received: dict[int, np.ndarray] = {}
        if remote and self.uses_mpi:
            target = receive_into or (lambda _w: None)
            if backend == "p2p":
                received = self._p2p(remote, owner, packed, size_of, target)
            else:
                received = self._collective(remote, owner, packed, size_of, target, wanted)
        return {w: packed[w] if owner(w) == me else received[w] for w in wanted}

    def _p2p(
        self,
        remote: Iterable[tuple[int, int]],
        owner: Callable[[int], int],
        packed: Mapping[int, np.ndarray],
        size_of: Callable[[int], int],
        target: Callable[[int], np.ndarray | None],
    ) -> dict[int, np.ndarray]:
        me = self.rank
        requests: list[Any] = []
        receives: list[tuple[int, int]] = []  # (position in ``requests``, donor) of each receive
        received: dict[int, np.ndarray] = {}
        for w, dst in remote:
            if dst == me and w not in received:
                received[w] = _or_new(target(w), size_of(w))
                receives.append((len(requests), w))
                requests.append(self._comm.Irecv(received[w], source=owner(w), tag=w))
            if owner(w) == me:
                requests.append(self._comm.Isend(packed[w], dest=dst, tag=w))
        statuses = [MPI.Status() for _ in requests]
        try:
            _wait(requests, _MOVE_SPIN_S, statuses)
        except MPI.Exception as exc:  # a longer message than the receive buffer: MPI_ERR_TRUNCATE
            failed = [(w, statuses[i].Get_error()) for i, w in receives if statuses[i].Get_error() != MPI.SUCCESS]
            source, code = "member state", exc.Get_error_code()
            if failed:
                source, code = f"member {failed[0][0]}'s state from rank {owner(failed[0][0])}", failed[0][1]
            expected = size_of(failed[0][0]) if failed else "another number of"
            raise ExchangeError(
                f"rank {me}: receiving {source} failed ({MPI.Get_error_string(code)}); this rank expected "
                f"{expected} bytes: the ranks disagree on the state layout"
            ) from None
        for index, w in receives:
            count = statuses[index].Get_count(MPI.BYTE)
            if count != received[w].nbytes:
                raise ExchangeError(
                    f"rank {me}: member {w}'s state from rank {owner(w)} has {count} bytes, this rank expected "
                    f"{received[w].nbytes}: the ranks disagree on the state layout"
                )
        return received

    def _collective(
        self,
        remote: Iterable[tuple[int, int]],
        owner: Callable[[int], int],
        packed: Mapping[int, np.ndarray],
        size_of: Callable[[int], int],
        target: Callable[[int], np.ndarray | None],
        wanted: Iterable[int],
    ) -> dict[int, np.ndarray]:
        wanted = set(wanted)
        received: dict[int, np.ndarray] = {}
        for w in sorted({w for w, _ in remote}):
            buf: np.ndarray | None = None
            if owner(w) == self.rank:
                buf = packed[w]
            elif w in wanted:  # a loser here: receive in place when possible
                buf = _or_new(target(w), size_of(w))
            size = np.array([-1 if buf is None else buf.nbytes], dtype=np.int64)
            _wait([self._comm.Ibcast(size, root=owner(w))])  # the header: the state's size
            if buf is None:  # every rank takes part in a broadcast; unneeded data lands in reused scratch
                if self._scratch is None or self._scratch.nbytes < int(size[0]):
                    self._scratch = np.empty(int(size[0]), dtype=np.uint8)
                buf = self._scratch[: int(size[0])]
            elif int(size[0]) != buf.nbytes:
                raise ExchangeError(
                    f"rank {self.rank}: member {w}'s state from rank {owner(w)} has {int(size[0])} bytes, this rank "
                    f"expected {buf.nbytes}: the ranks disagree on the state layout"
                )
            _wait([self._comm.Ibcast(buf, root=owner(w))], _MOVE_SPIN_S)
            if w in wanted:
                received[w] = buf
        return received


def _or_new(buf: np.ndarray | None, nbytes: int) -> np.ndarray:
    """``buf`` if it is a usable receive buffer of ``nbytes``, else a fresh one."""
    return buf if buf is not None and buf.nbytes == nbytes else np.empty(nbytes, dtype=np.uint8)


def _wait(requests: list[Any], spin_s: float = _SPIN_S, statuses: list[Any] | None = None) -> None:
    """Complete MPI requests, polling for ``spin_s`` seconds, then sleeping with back-off.

    ``statuses``, if given, receives one status per request (for received counts).
    """
    if not requests:
        return
    start = time.perf_counter()
    delay = 1e-5
    while not MPI.Request.Testall(requests, statuses):
        if time.perf_counter() - start > spin_s:
            time.sleep(delay)
            delay = min(delay * 2, _MAX_SLEEP_S)
        else:
            # give the core away between polls: with more ranks than cores, the peer
            # that must move the data next may be waiting for this very core
            os.sched_yield()


class Mailbox:
    """Point-to-point messages of the asynchronous engine, on its own duplicate of the world communicator.

    Small control messages (records, requests, tickets) are pickled; member
    snapshots travel as raw ``uint8`` buffers whose size the receiver learns
    from the matched message (``Improbe``), so snapshots of different sizes
    need no agreement beforehand. Sends do not wait: their buffers are kept
    alive until MPI reports them complete; the one exception is a snapshot
    delivered to a rank that waits for it (:meth:`deliver_buffer`). Nothing
    here waits for a message without calling ``while_waiting`` (the engine
    serves its own requests from it), so two ranks fetching from each other
    cannot deadlock.
    """

    def __init__(self, comm: Comm) -> None:
        self.rank, self.size = comm.rank, comm.size
        self._comm = comm._comm.Dup() if comm.uses_mpi else None
        self._sends: list[tuple[Any, np.ndarray]] = []
        self._receiving = 0  # > 0 inside receive_buffer: this rank is itself waiting for a message
        self._deferred: list[tuple[Any, np.ndarray]] = []  # snapshots delivered meanwhile, still in flight

    def send(self, dest: int, tag: int, obj: Any) -> None:
        """Send a small picklable object without waiting."""
        self.send_buffer(dest, tag, np.frombuffer(pickle.dumps(obj), dtype=np.uint8))

    def send_buffer(self, dest: int, tag: int, buf: np.ndarray) -> None:
        """Send a contiguous uint8 buffer without waiting; ``buf`` must not change until sent."""
        assert self._comm is not None, "no other rank to send to"
        self._sends.append((self._comm.Isend(buf, dest=dest, tag=tag), buf))
        self._reap()

    def deliver_buffer(self, dest: int, tag: int, buf: np.ndarray) -> None:
        """Send a buffer that ``dest`` is waiting for in :meth:`receive_buffer`, and see it through.

        MPI moves a large message in chunks, and only while the sender polls:
        left to the sender's polls between training steps, a 25 MB snapshot took
        0.4-1.0 s (docs/benchmarks.md §8). So the sender polls until it is sent.
        If this rank is itself waiting in :meth:`receive_buffer` (it may be
        serving a rank that serves it), the send is finished there instead: that
        loop polls without sleeping while it is in flight, and sees it through
        before returning. Receivers of snapshots are always waiting and polling,
        so neither wait can deadlock.
        """
        assert self._comm is not None, "no other rank to send to"
        request = self._comm.Isend(buf, dest=dest, tag=tag)
        if self._receiving:
            self._deferred.append((request, buf))
            return
        _wait([request], _MOVE_SPIN_S)

    def _reap(self) -> None:
        if self._sends:
            self._sends = [(r, b) for r, b in self._sends if not r.Test()]
        if self._deferred:
            self._deferred = [(r, b) for r, b in self._deferred if not r.Test()]

    def incoming_buffers(self, tag: int) -> list[tuple[int, np.ndarray]]:
        """Every raw buffer message with ``tag`` that has arrived: ``(source, buffer)``."""
        if self._comm is None:
            return []
        out: list[tuple[int, np.ndarray]] = []
        while True:
            buf, source = self._take(MPI.ANY_SOURCE, tag)
            if buf is None:
                return out
            out.append((source, buf))

    def incoming(self, tags: Iterable[int]) -> list[tuple[int, int, Any]]:
        """Every object message with one of ``tags`` that has arrived: ``(source, tag, object)``."""
        if self._comm is None:
            return []
        self._reap()
        out = []
        for tag in tags:
            while True:
                buf, source = self._take(MPI.ANY_SOURCE, tag)
                if buf is None:
                    break
                out.append((source, tag, pickle.loads(buf.tobytes())))
        return out

    def _take(self, source: int, tag: int) -> tuple[np.ndarray | None, int]:
        assert self._comm is not None
        status = MPI.Status()
        message = self._comm.Improbe(source=source, tag=tag, status=status)
        if message is None:
            return None, -1
        buf = np.empty(status.Get_count(MPI.BYTE), dtype=np.uint8)
        message.Recv(buf)
        return buf, status.Get_source()

    def receive_buffer(self, source: int, tag: int, while_waiting: Callable[[], object]) -> np.ndarray:
        """The next buffer from ``source`` with ``tag``, of whatever size it has; calls ``while_waiting`` meanwhile."""
        assert self._comm is not None, "no other rank to receive from"
        delay = 1e-5
        self._receiving += 1
        try:
            while True:
                buf, _ = self._take(source, tag)
                if buf is not None:
                    break
                while_waiting()
                self._reap()
                if self._deferred:  # a snapshot we serve is in flight: MPI moves it only while we poll
                    os.sched_yield()
                    delay = 1e-5
                    continue
                time.sleep(delay)
                delay = min(delay * 2, _MAX_SLEEP_S / 2)
        finally:
            self._receiving -= 1
        if self._deferred:  # left to the polls between training steps, they would crawl
            _wait([r for r, _ in self._deferred], _MOVE_SPIN_S)
            self._deferred = []
        return buf

    def receive(self, source: int, tag: int, while_waiting: Callable[[], object]) -> Any:
        """The next object from ``source`` with ``tag`` (see :meth:`receive_buffer`)."""
        return pickle.loads(self.receive_buffer(source, tag, while_waiting).tobytes())

    def barrier(self, while_waiting: Callable[[], object]) -> None:
        """Finish every send, then wait for every rank (``Ibarrier``), calling ``while_waiting`` meanwhile."""
        if self._comm is None:
            return
        delay = 1e-5
        while self._sends or self._deferred:
            while_waiting()
            self._reap()
            time.sleep(delay)
            delay = min(delay * 2, _MAX_SLEEP_S)
        request = self._comm.Ibarrier()
        delay = 1e-5
        while not request.Test():
            while_waiting()
            time.sleep(delay)
            delay = min(delay * 2, _MAX_SLEEP_S)

    def close(self) -> None:
        """Free the communicator (after :meth:`barrier`: nothing is in flight)."""
        if self._comm is not None:
            self._comm.Free()
            self._comm = None
