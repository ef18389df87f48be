"""Shared library of the cropseg services: settings base, logging, safe image decoding."""

__version__ = "0.1.0"
