"""telerad: remote imaging consultation."""

__version__ = "0.1.0"
