"""fedsim: the command-line entry point sits here, on top of ``flows``."""

__version__ = "0.1.0"
