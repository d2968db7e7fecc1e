"""Member state as one contiguous buffer: shared by the SB3 adapter and plain-PyTorch members.

A subclass names its tensors (weights, buffers, optimizer state) in a fixed
order and its optimizers; :class:`FlatTorchState` re-points them all at
slices of one float32 tensor, so packing a member for an exploit costs
nothing and unpacking is one memcpy, and describes the layout (names,
shapes, dtypes) so that ranks can check they agree before anything moves.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch


def init_optimizer_state(optimizers: Iterable[torch.optim.Optimizer]) -> None:
    """Create every optimizer's state now, exactly as its first step would, so the layout never changes.

    PyTorch optimizers create their state (Adam's moments, RMSprop's averages,
    step counts) lazily at the first step; until then a member's state is
    smaller than a trained member's. One step with zero gradients and a zero
    learning rate creates the state without moving a weight; every state
    tensor is then zeroed, which is the value a first real step starts from.
    """
    for opt in optimizers:
        if opt.state:
            continue
        saved_lr = [group["lr"] for group in opt.param_groups]
        params = [p for group in opt.param_groups for p in group["params"]]
        grads = [p.grad for p in params]
        with torch.no_grad():
            for p in params:
                p.grad = torch.zeros_like(p)
            for group in opt.param_groups:
                group["lr"] = 0.0
            before = [p.detach().clone() for p in params]
            opt.step()
            for p, old in zip(params, before, strict=True):
                p.copy_(old)
            for group, lr in zip(opt.param_groups, saved_lr, strict=True):
                group["lr"] = lr
            for state in opt.state.values():
                for value in state.values():
                    if isinstance(value, torch.Tensor):
                        value.zero_()
        for p, g in zip(params, grads, strict=True):
            p.grad = g


def _numpy_dtype(dtype: torch.dtype) -> np.dtype[Any]:
    """The numpy dtype of torch ``dtype`` (read from a CPU tensor: ``.numpy()`` of a GPU tensor fails)."""
    return torch.empty(0, dtype=dtype).numpy().dtype


def cpu_tensors(obj: Any) -> Any:
    """``obj`` with every tensor in it (nested dicts, lists, tuples: state dicts) copied to the CPU.

    CPU tensors are returned as they are, so this costs nothing on the CPU.
    Checkpoints store what this returns: a run written on GPUs loads on CPUs.
    """
    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        return {k: cpu_tensors(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(cpu_tensors(v) for v in obj)
    return obj


class FlatTorchState:
    """Mixin: pack/unpack and layout of a member's tensors; subclasses supply the tensors and optimizers."""

    cfg: Any
    id: int
    diverged: bool
    _flat: np.ndarray | None = None

    def _named_tensors(self) -> list[tuple[str, torch.Tensor]]:
        """Every tensor that moves on exploit, named, in a fixed order, each once."""
        raise NotImplementedError

    def _optimizers(self) -> list[torch.optim.Optimizer]:
        """The member's optimizers (their state is among the named tensors)."""
        raise NotImplementedError

    def aux_nbytes(self, replay: bool) -> int:
        """Bytes of state that moves besides the tensors (none by default)."""
        return 0

    def match_layout(self, hparams: Any) -> None:
        """Take the layout of a member with ``hparams`` before loading its state (fixed layouts: nothing to do)."""

    def _tensors(self) -> list[torch.Tensor]:
        """The tensors of :meth:`_named_tensors`, in the same order."""
        return [t for _, t in self._named_tensors()]

    def state_layout(self) -> tuple[int, int, str]:
        """What peers must agree on before states move: state bytes, aux bytes and a hash of the layout.

        The hash covers every tensor's name, shape and dtype in packing order
        and the aux buffer's size, so two members with equal hashes pack
        byte-compatible buffers.
        """
        described = [(n, list(t.shape), str(t.dtype)) for n, t in self._named_tensors()]
        aux = self.aux_nbytes(self.cfg.copy_replay_buffer)
        digest = hashlib.sha256(json.dumps([described, aux]).encode()).hexdigest()[:16]
        return self.state_nbytes, aux, digest

    def _flat_state(self) -> np.ndarray | None:
        """The member's state as one contiguous uint8 array that *is* its weights and Adam state.

        On first use (once the optimizer state exists) every parameter, buffer and
        optimizer-state tensor is re-pointed at a slice of one float32 tensor, so
        packing costs nothing and unpacking is one memcpy. Returns None when the
        layout cannot be flattened (no optimizer state yet, or mixed dtypes).
        """
        if self._flat is not None:
            return self._flat
        tensors = self._tensors()
        if any(not opt.state for opt in self._optimizers()) or any(
            t.dtype != torch.float32 or t.device.type != "cpu" for t in tensors
        ):
            return None
        flat = torch.empty(sum(t.numel() for t in tensors), dtype=torch.float32)
        offset = 0
        with torch.no_grad():
            for t in tensors:
                n = t.numel()
                view = flat[offset : offset + n].view(t.shape)
                view.copy_(t.detach())
                t.data = view  # the Parameter / state tensor object stays; its storage moves
                offset += n
        self._flat = flat.numpy().view(np.uint8)
        return self._flat

    @property
    def state_nbytes(self) -> int:
        """Size of :meth:`pack` output."""
        flat = self._flat_state()
        if flat is not None:
            return flat.nbytes
        return sum(t.numel() * t.element_size() for t in self._tensors())

    def pack(self) -> np.ndarray:
        """Weights + optimizer state as one contiguous uint8 buffer.

        This is normally a live view of the member's state, not a copy: copy it
        before changing the member if the old state must survive.
        """
        flat = self._flat_state()
        if flat is not None:
            return flat
        tensors = self._tensors()
        out = np.empty(sum(t.numel() * t.element_size() for t in tensors), dtype=np.uint8)
        offset = 0
        for t in tensors:  # on a GPU, .cpu() copies to the host: the buffer is CPU bytes on any device
            raw = t.detach().cpu().contiguous().reshape(-1).numpy().view(np.uint8)
            out[offset : offset + raw.size] = raw
            offset += raw.size
        return out

    def receive_buffer(self) -> np.ndarray | None:
        """Where an incoming state can be received directly (see :meth:`unpack`), if anywhere."""
        return self._flat_state()

    def unpack(self, buf: np.ndarray) -> None:
        """Load weights + optimizer state from a :meth:`pack` buffer of the same layout.

        Only finite members are ever copied, so the member is no longer diverged.
        """
        flat = self._flat_state()
        need = self.state_nbytes
        if buf.nbytes != need:
            raise ValueError(f"member {self.id}: state buffer has {buf.nbytes} bytes, layout needs {need}")
        if flat is not None:
            if buf.ctypes.data != flat.ctypes.data:  # equal when received in place
                flat[:] = buf
        else:
            offset = 0
            with torch.no_grad():
                for t in self._tensors():
                    n = t.numel() * t.element_size()
                    src = buf[offset : offset + n].view(_numpy_dtype(t.dtype))
                    t.copy_(torch.from_numpy(src.copy()).reshape(t.shape))  # copy_ moves it to t's device
                    offset += n
        self.diverged = False
