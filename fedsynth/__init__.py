"""fedsynth: federated, differentially private diffusion models for synthetic tabular data."""

__version__ = "0.1.0"
