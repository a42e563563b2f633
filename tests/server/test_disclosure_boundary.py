"""The disclosure code has no access path to message queues, attachments, groups, keys or
reports: it imports only what reads accounts and the connection log."""

from __future__ import annotations

import ast
from pathlib import Path

import parley.server.disclosure as disclosure

ALLOWED_MODULES = {
    "__future__",
    "base64",
    "typing",
    "rfc8785",
    "sqlalchemy",
    "sqlalchemy.ext.asyncio",
    "parley.crypto.primitives",
    "parley.server.storage.tables",
}
ALLOWED_TABLES = {"accounts", "connection_log"}


def _imports() -> list[tuple[str, list[str]]]:
    found = []
    for path in Path(disclosure.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found += [(alias.name, []) for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                found.append((node.module, [alias.name for alias in node.names]))
    return found


def test_disclosure_imports_only_what_reads_accounts_and_the_connection_log() -> None:
    imports = _imports()
    assert imports, "the scan must see the package's imports"
    assert {module for module, _ in imports} <= ALLOWED_MODULES
    tables = {
        name
        for module, names in imports
        if module == "parley.server.storage.tables"
        for name in names
    }
    assert tables == ALLOWED_TABLES


def test_the_package_reads_no_other_table() -> None:
    from parley.server.disclosure import package

    referenced = {
        name
        for name in vars(package)
        if name
        in {
            "messages",
            "attachments",
            "group_members",
            "groups",
            "reports",
            "one_time_prekeys",
            "kem_prekeys",
            "signed_prekeys",
            "notices",
            "sent_keys",
        }
    }
    assert referenced == set()
