"""``parley-admin transparency report --html`` draws what a remote server sent:
a hostile server's non-numeric counts are refused in one line, not a traceback."""

from __future__ import annotations

import pytest

from parley.cli.admin import checked_report
from parley.errors import ParleyError

ROW = {k: 1 for k in ("requests", "accounts", "granted", "partly_granted", "refused", "pending")}
GOOD = {
    "quarter": "2026Q4",
    "totals": ROW,
    "by_country": {"DE": ROW},
    "by_category": {"fraud": ROW},
}


def test_a_well_formed_report_passes() -> None:
    assert checked_report(GOOD) == GOOD


@pytest.mark.parametrize(
    "bad",
    [
        {**GOOD, "totals": {**ROW, "requests": "<b>1</b>"}},
        {**GOOD, "by_country": {"DE": {**ROW, "granted": -1}}},
        {**GOOD, "by_category": {"fraud": {**ROW, "refused": True}}},
        {**GOOD, "by_country": ["DE"]},
        {**GOOD, "totals": None},
        ["not", "a", "report"],
    ],
)
def test_malformed_counts_are_refused(bad: object) -> None:
    with pytest.raises(ParleyError, match="malformed transparency report"):
        checked_report(bad)
