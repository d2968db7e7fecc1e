"""PBT of a plain PyTorch training loop (no SB3): a small network learns y = sin(3x) from noisy samples.

Every member trains its own MLP with Adam; PBT searches the learning rate,
the minibatch size and the weight decay. Fitness is minus the mean squared
error on a fixed validation set. Run it alone or under MPI:

    python examples/custom_trainer.py --agents-per-rank 4
    mpiexec -n 2 python examples/custom_trainer.py --agents-per-rank 2

Stop it (Ctrl-C, SIGTERM) and run the same command with ``--resume RUN_DIR``
to continue exactly where it stopped.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from typing import Any

import torch

import evo_mpi
from evo_mpi.config import Config
from evo_mpi.torch_member import TorchMember

#: The data set: fixed by its own seed, the same for every member and rank.
_DATA = torch.Generator().manual_seed(1234)
TRAIN_X = torch.rand(4096, 1, generator=_DATA) * 4 - 2
TRAIN_Y = torch.sin(3 * TRAIN_X) + 0.1 * torch.randn(4096, 1, generator=_DATA)
VALID_X = torch.linspace(-2, 2, 512).unsqueeze(1)
VALID_Y = torch.sin(3 * VALID_X)


class SineRegression(TorchMember):
    """One member: an MLP, its Adam optimizer, and a training step over minibatches."""

    def build(self, hparams: Mapping[str, Any]) -> None:
        """A 1-64-64-1 tanh network and Adam."""
        net = torch.nn.Sequential(
            torch.nn.Linear(1, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1)
        )
        self.modules = {"net": net}
        self.optimizers = {"adam": torch.optim.Adam(net.parameters(), lr=1e-3)}

    def set_hparams(self, hparams: Mapping[str, Any]) -> None:
        """Learning rate and weight decay live in Adam's param groups; the batch size is read in train_steps."""
        for group in self.optimizers["adam"].param_groups:
            group["lr"] = float(hparams["learning_rate"])
            group["weight_decay"] = float(hparams["weight_decay"])

    def train_steps(self, steps: int, generation: int, should_stop: Callable[[], bool]) -> int:
        """Minibatch SGD over ``steps`` samples (random minibatches: the stream is seeded per generation)."""
        net, opt = self.modules["net"], self.optimizers["adam"]
        batch = int(self.hparams["batch_size"])
        done = 0
        while done < steps and not should_stop():
            index = torch.randint(0, TRAIN_X.shape[0], (batch,))
            loss = torch.nn.functional.mse_loss(net(TRAIN_X[index]), TRAIN_Y[index])
            opt.zero_grad()
            loss.backward()
            opt.step()
            done += batch
        return done

    def evaluate(self, generation: int) -> float:
        """Minus the validation MSE."""
        with torch.no_grad():
            return -float(torch.nn.functional.mse_loss(self.modules["net"](VALID_X), VALID_Y))


def make_member(member_id: int, cfg: Config, hparams: Mapping[str, Any], tb_dir: str | None) -> TorchMember:
    """The member factory evo_mpi calls on the rank that owns ``member_id``."""
    return SineRegression(member_id, cfg, hparams, tb_dir)


SPACE = {
    "learning_rate": "loguniform:1e-4:3e-2",
    "batch_size": "choice:16,32,64,128",
    "weight_decay": "loguniform:1e-6:1e-2",
}


def main() -> None:
    """Parse a few options and run PBT through the Python API."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents-per-rank", type=int, default=4)
    parser.add_argument("--generations", type=int, default=10)
    parser.add_argument("--steps-per-generation", type=int, default=8192)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run-dir", default="runs/custom-trainer")
    parser.add_argument("--resume", metavar="RUN_DIR")
    args = parser.parse_args()
    options = {"agents_per_rank": args.agents_per_rank}
    if args.resume is None:
        options.update(
            generations=args.generations,
            steps_per_generation=args.steps_per_generation,
            seed=args.seed,
            run_dir=args.run_dir,
            search_space=SPACE,
            fitness_window=3,
        )
    result = evo_mpi.train(member=make_member, resume=args.resume, **options)
    if result.status == "interrupted":
        raise SystemExit(75)
    if result.rank == 0 and result.best_fitness is not None:
        print(f"best member {result.best_member}: validation MSE {-result.best_fitness:.4f}, {result.best_hparams}")


if __name__ == "__main__":
    main()
