"""parley-server: relays ciphertext it cannot read, keeps as little as it can, loses nothing."""
