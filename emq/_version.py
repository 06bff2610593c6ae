"""The package version, in a module of its own so that any part of emq can read it cheaply."""

__version__ = "0.1.0"
