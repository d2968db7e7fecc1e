"""Population-Based Training of stable-baselines3 agents (or your own PyTorch training code) over MPI.

``evo_mpi.train(...)`` runs PBT in this process or, under ``mpiexec``, on
every rank of the job, and returns a :class:`Result`; ``python -m
evo_mpi.run`` is the same from the command line.
"""

from .api import GenerationSummary, Result, Status, train
from .config import Config, ConfigError

__version__ = "0.1.0"

__all__ = ["Config", "ConfigError", "GenerationSummary", "Result", "Status", "train", "__version__"]
