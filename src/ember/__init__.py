"""ember: PyTorch training from your own loop to a full trainer, on one shared core."""

__version__ = "0.1.0"
