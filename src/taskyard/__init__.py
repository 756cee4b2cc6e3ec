"""taskyard: a durable task API in front of a fleet of HTTP inference servers."""

__version__ = "0.1.0"
