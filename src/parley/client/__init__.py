"""The Parley client: server API transport, key management, sessions, local store."""
