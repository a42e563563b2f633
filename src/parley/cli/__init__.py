"""Entry points: thin argument parsing over the client and server APIs."""
