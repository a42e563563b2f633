"""Thin typed wrappers over pyca/cryptography: the only importer of its hazmat layer.

Keys are built from bytes handed in (``from_seed``), so that the sans-I/O core
takes all of its randomness as an argument and tests can replay it.
"""
