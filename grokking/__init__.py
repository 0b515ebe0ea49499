"""Grokking experiments with the log-alignment ratio (LAR) as a training-time diagnostic."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("grokking")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
