"""kvorum: a strongly consistent, Redis-compatible, distributed in-memory cache."""

__version__ = "0.1.0"
