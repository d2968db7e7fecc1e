"""Population-Based Training of stable-baselines3 agents over MPI."""

__version__ = "0.1.0"
