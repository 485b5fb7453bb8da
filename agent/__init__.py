"""The CentOps client agent and the core it shares with the tools."""

__version__ = "0.1.0"
