"""The package version, in a module that imports nothing (the weights format records it in every file)."""

__version__ = "0.1.0"
