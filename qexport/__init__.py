"""qexport: export trained PyTorch classifiers to deployment artifacts and benchmark them honestly."""

__version__ = "0.1.0"
