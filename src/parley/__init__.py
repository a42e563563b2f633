"""Parley: a private messenger whose server relays ciphertext it cannot read."""

__version__ = "0.1.0"
