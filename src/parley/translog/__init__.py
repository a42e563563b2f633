"""Transparency logs: RFC 6962/9162 Merkle trees and proofs (pure functions, no I/O)."""
