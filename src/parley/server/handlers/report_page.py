"""The quarterly transparency report, aggregated from the public log itself, so
anyone holding the log can recompute it.

A replay (an order id submitted again, refused) is the same order again, not
a new request: it is counted under ``replays`` and in no other figure. Entries
mark it ``"replay": true``; older entries are known by their refusal reason.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from parley.display import html_text
from parley.errors import BadRequest
from parley.server.handlers.transparency import TransparencyHandler


async def aggregate(log: TransparencyHandler, quarter: str) -> dict[str, Any]:
    if (
        len(quarter) != 6
        or quarter[4] != "Q"
        or not quarter[:4].isdigit()
        or quarter[5] not in "1234"
    ):
        raise BadRequest("a quarter looks like 2026Q4", "invalid_request")
    head = await log.head()
    entries = []
    for start in range(0, head.size, 1000):
        entries += await log.entries(start, min(head.size, start + 1000))
    requests = {
        e["body"]["request"]: e["body"]
        for e in entries
        if e["kind"] == "legal_request" and e["body"].get("received") == quarter
    }
    final: dict[str, str] = {r: b["status"] for r, b in requests.items()}
    for e in entries:
        if e["kind"] == "legal_decision" and e["body"]["request"] in final:
            final[e["body"]["request"]] = e["body"]["status"]

    def bucket() -> dict[str, int]:
        return {
            "requests": 0,
            "accounts": 0,
            "granted": 0,
            "partly_granted": 0,
            "refused": 0,
            "pending": 0,
            "replays": 0,
        }

    by_country: dict[str, dict[str, int]] = defaultdict(bucket)
    by_category: dict[str, dict[str, int]] = defaultdict(bucket)
    totals = bucket()
    for request_id, body in requests.items():
        where = (by_country[body["jurisdiction"]], by_category[body["category"]], totals)
        if _is_replay(body):
            for agg in where:
                agg["replays"] += 1
            continue
        status = final[request_id]
        outcome = (
            "refused"
            if status == "refused"
            else "pending"
            if status == "pending"
            else ("partly_granted" if body.get("refused_parts") else "granted")
        )
        for agg in where:
            agg["requests"] += 1
            agg["accounts"] += (
                body.get("accounts", 0) if outcome in ("granted", "partly_granted") else 0
            )
            agg[outcome] += 1
    return {
        "quarter": quarter,
        "log_size": head.size,
        "log_root": head.root.hex(),
        "totals": totals,
        "by_country": dict(sorted(by_country.items())),
        "by_category": dict(sorted(by_category.items())),
    }


def _is_replay(body: dict[str, Any]) -> bool:
    return body.get("replay") is True or str(body.get("refusal") or "").startswith("replay:")


def render_html(report: dict[str, Any]) -> str:
    """A self-contained page with an SVG bar chart of requests by country.

    Every value is shown through ``display.html_text`` (controls as escapes, then
    HTML-escaped): countries and categories come from court orders, and
    ``parley-admin --html`` renders a report a remote server sent."""
    e = html_text
    rows = report["by_country"]
    peak = max([v["requests"] for v in rows.values()] or [1])
    bars = []
    for i, (country, v) in enumerate(rows.items()):
        y = 10 + i * 34
        for j, (key, colour) in enumerate(
            (("granted", "#2a9d8f"), ("partly_granted", "#e9c46a"), ("refused", "#e76f51"))
        ):
            offset = sum(v[k] for k in ("granted", "partly_granted", "refused")[:j])
            bars.append(
                f'<rect x="{60 + offset * 400 / peak:.1f}" y="{y}" width="{v[key] * 400 / peak:.1f}" height="24" fill="{colour}"><title>{key}: {e(v[key])}</title></rect>'
            )
        bars.append(
            f'<text x="0" y="{y + 17}">{e(country)}</text><text x="{66 + v["requests"] * 400 / peak:.1f}" y="{y + 17}">{e(v["requests"])}</text>'
        )
    height = 20 + 34 * max(len(rows), 1)

    def table(title: str, data: dict[str, dict[str, int]]) -> str:
        head = (
            "<tr><th>"
            + title
            + "</th><th>requests</th><th>accounts affected</th><th>granted</th><th>partly granted</th><th>refused</th><th>pending</th><th>replays</th></tr>"
        )
        body = "".join(
            f"<tr><td>{e(k)}</td><td>{e(v['requests'])}</td><td>{e(v['accounts'])}</td><td>{e(v['granted'])}</td><td>{e(v['partly_granted'])}</td><td>{e(v['refused'])}</td><td>{e(v['pending'])}</td><td>{e(v.get('replays', 0))}</td></tr>"
            for k, v in data.items()
        )
        return f"<table>{head}{body}</table>"

    t = report["totals"]
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Parley transparency report {e(report["quarter"])}</title>
<style>body{{font-family:sans-serif;max-width:860px;margin:2em auto}}table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 8px}}</style></head>
<body><h1>Transparency report {e(report["quarter"])}</h1>
<p>{e(t["requests"])} lawful requests: {e(t["granted"])} granted, {e(t["partly_granted"])} partly granted, {e(t["refused"])} refused, {e(t["pending"])} pending; {e(t["accounts"])} accounts affected.
{e(t.get("replays", 0))} replays (an order submitted again) were refused and are not counted as requests.
Parley can disclose only a phone number and IP addresses; it never has messages. Every figure is computed from the public transparency log
(size {e(report["log_size"])}, root {e(report["log_root"])}), which anyone can verify with <code>parley audit</code>.</p>
<h2>Requests by country</h2><svg width="560" height="{height}" role="img" aria-label="requests by country">{"".join(bars)}</svg>
<p><span style="color:#2a9d8f">■</span> granted <span style="color:#e9c46a">■</span> partly granted <span style="color:#e76f51">■</span> refused</p>
{table("country", report["by_country"])}<h2>Requests by offence category</h2>{table("category", report["by_category"])}
</body></html>"""
