"""Which torch device a rank trains on: ``--device`` and the rank's node-local rank to a device (pure logic).

No torch or MPI import here: the caller passes in what it saw (the node-local
rank from :meth:`evo_mpi.comm.Comm.local_rank`, the GPUs torch can see), so
the mapping is a function of plain values and is tested on machines without
a GPU.

``--device`` takes:

* ``cpu`` (the default): every rank on the CPU;
* ``cuda``: node-local rank ``r`` on visible device ``r % n`` of the ``n``
  that the rank sees. ``CUDA_VISIBLE_DEVICES`` (and SLURM's
  ``--gpus-per-task``/``--gpus-per-node``, which set it) decides what is
  visible; with one device per task every rank uses ``cuda:0``. With more
  ranks than devices on a node, ranks share devices round-robin. No device
  visible is an error;
* ``cuda:N``: every rank on visible device ``N``;
* ``auto``: as ``cuda`` where a device is visible, else the CPU (with one line saying so).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

#: What ``--device`` accepts (documentation and error messages).
DEVICE_FORMS = "auto, cpu, cuda or cuda:N (N >= 0)"

_DEVICE_RE = re.compile(r"^(auto|cpu|cuda)(?::(\d+))?$")

#: Launcher variables holding the node-local rank, most specific first. Only a cross-check of
#: MPI's shared-memory split: inside an sbatch script started with mpiexec, ``SLURM_LOCALID`` is the
#: batch step's (0 for every rank), while Hydra's ``MPI_LOCALRANKID`` and Open MPI's variable are the ranks'.
LOCAL_RANK_VARS = ("OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID")


class DeviceError(ValueError):
    """``--device`` cannot be honoured; the message names the value and what was seen."""


@dataclass(frozen=True)
class DeviceChoice:
    """Where one rank trains.

    Attributes:
        device: A torch device string: ``cpu`` or ``cuda:K`` (K indexes the devices this rank sees).
        gpu: That device's name outside the process: its ``CUDA_VISIBLE_DEVICES`` entry
            (an index or UUID), or its index when the variable is unset; None on the CPU.
        note: One line for the user (``auto`` fell back to the CPU), or None.

    """

    device: str
    gpu: str | None = None
    note: str | None = None


def device_problem(text: str) -> str | None:
    """Why ``text`` is not a ``--device`` value, or None when its form is valid."""
    match = _DEVICE_RE.match(text)
    if match is None or (match.group(2) is not None and match.group(1) != "cuda"):
        return f"--device {text!r} is not a device (choose from {DEVICE_FORMS})"
    return None


def visible_gpus(cuda_visible_devices: str | None, count: int) -> list[str]:
    """The names of the ``count`` devices torch sees as ``cuda:0`` .. ``cuda:count-1``.

    Args:
        cuda_visible_devices: ``CUDA_VISIBLE_DEVICES`` (None: unset).
        count: ``torch.cuda.device_count()``, which already honours the variable.

    CUDA keeps the entries of the variable up to the first invalid one, in
    order, so the devices torch counts are its first ``count`` entries.
    Unset, they are the node's devices ``0 .. count-1``.
    """
    if cuda_visible_devices is None:
        return [str(i) for i in range(count)]
    entries = [e.strip() for e in cuda_visible_devices.split(",") if e.strip()]
    if len(entries) < count:  # not a list CUDA could have honoured: name the devices by index
        return [str(i) for i in range(count)]
    return entries[:count]


def assign_device(requested: str, local_rank: int, visible: Sequence[str]) -> DeviceChoice:
    """The device of the rank with node-local rank ``local_rank`` that sees the GPUs ``visible``.

    Args:
        requested: The ``--device`` value.
        local_rank: The rank's index among the ranks on its node (0 ..).
        visible: The names of the devices the rank sees, as :func:`visible_gpus` gives them.

    Raises:
        DeviceError: a malformed value, ``cuda`` with no device visible, or ``cuda:N`` past the last one.

    """
    problem = device_problem(requested)
    if problem is not None:
        raise DeviceError(problem)
    if local_rank < 0:
        raise ValueError(f"local rank must be >= 0, got {local_rank}")
    match = _DEVICE_RE.match(requested)
    assert match is not None
    kind, index = match.group(1), match.group(2)
    n = len(visible)
    if kind == "cpu":
        return DeviceChoice("cpu")
    if kind == "auto" and n == 0:
        return DeviceChoice("cpu", note="evo-mpi: --device auto: no CUDA device visible, training on the CPU")
    if n == 0:
        raise DeviceError(f"--device {requested}: no CUDA device visible")
    k = local_rank % n if index is None else int(index)
    if k >= n:
        raise DeviceError(
            f"--device {requested}: only {n} CUDA device(s) visible (cuda:0 .. cuda:{n - 1}: {', '.join(visible)})"
        )
    return DeviceChoice(f"cuda:{k}", gpu=visible[k])


def launcher_local_rank(env: Mapping[str, str]) -> tuple[str, int] | None:
    """The launcher's node-local rank variable and its value (the first of :data:`LOCAL_RANK_VARS` set), or None."""
    for name in LOCAL_RANK_VARS:
        value = env.get(name, "").strip()
        if value.isdigit():
            return name, int(value)
    return None


__all__ = [
    "DEVICE_FORMS",
    "DeviceChoice",
    "DeviceError",
    "LOCAL_RANK_VARS",
    "assign_device",
    "device_problem",
    "launcher_local_rank",
    "visible_gpus",
]
