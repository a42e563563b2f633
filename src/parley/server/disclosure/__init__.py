"""What a granted lawful request can disclose: a phone number and IP addresses. Nothing else.

This package is the only code that builds a disclosure. It reads two tables,
``accounts`` (the phone number) and ``connection_log`` (IP addresses with
times), through the narrow reader below, and imports nothing that can reach
message queues, attachments, groups, keys or reports: ``ruff.toml`` here bans
those modules and ``tests/server/test_disclosure_boundary.py`` checks it.
"""
