"""The largest report a client may send fits the body limit of ``POST /v1/reports``
(the limit is computed from the bounds; this encodes the worst case and measures it)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from parley.protocol.franking import MAX_PARTY, MAX_SENT_AT_MS
from parley.protocol.wire import MAX_ATTACHMENT_ID, MAX_ATTACHMENTS, MAX_CONTROL, MAX_TEXT
from parley.server.api.schemas import MAX_REPORT_BODY, ReportIn
from parley.server.handlers.reports import MAX_COMMENT, MAX_CONTEXT

KEY = base64.b64encode(b"\xff" * 32).decode()


def _worst() -> dict[str, Any]:
    control = "\x01"  # one UTF-8 byte, six JSON bytes (\u0001)
    message = {
        "franking_key": KEY,
        "sender": control * MAX_PARTY,
        "conversation": control * MAX_PARTY,
        "sent_at_ms": MAX_SENT_AT_MS,
        "text": control * MAX_TEXT,
        "attachment_digests": [KEY] * MAX_ATTACHMENTS,
        "control": base64.b64encode(b"\xff" * MAX_CONTROL).decode(),
        "commitment": KEY,
        "server_ms": MAX_SENT_AT_MS,
        "tag": KEY,
    }
    return {
        "category": "\U0001f600" * 16,  # twelve bytes each when escaped
        "comment": "\U0001f600" * MAX_COMMENT,
        "messages": [message] * (1 + MAX_CONTEXT),
        "attachments": [
            {
                "id": control * MAX_ATTACHMENT_ID,
                "key": KEY,
                "digest": KEY,
                "name": "\U0001f600" * 255,  # the reporter's file name (a claim)
            }
        ]
        * MAX_ATTACHMENTS,
    }


@pytest.mark.parametrize(
    "encoding",
    [
        {},  # Python's default: ASCII only, ", " and ": "
        {"ensure_ascii": False, "separators": (",", ":")},  # what httpx sends
    ],
)
def test_the_worst_case_report_fits_the_body_limit(encoding: dict[str, Any]) -> None:
    body = json.dumps(_worst(), **encoding).encode()
    assert len(body) <= MAX_REPORT_BODY
    ReportIn.model_validate_json(body)  # and the schema admits it


def test_the_body_limit_is_not_loose() -> None:
    body = json.dumps(_worst()).encode()
    assert len(body) > 2 * 1024 * 1024  # the old limit: what made such reports a 413
    assert MAX_REPORT_BODY - len(body) < 0.001 * MAX_REPORT_BODY
