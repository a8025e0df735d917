"""``trr-assets report``: one self-contained HTML page of the system's state.

Everything is inline: the style, the chart (SVG drawn here, no script), no
font, image or stylesheet fetched from anywhere, so the file reads the same
opened from disk, mailed, or archived. Every value from the database is
escaped.
"""

from __future__ import annotations

import html
from datetime import datetime
from typing import Any

from trr_assets.cli.render import duration as age
from trr_assets.status import DRIFT_KINDS, QueueStatus

SERIES = (  # (summary count, legend, colour, dashes: lines that coincide both stay visible)
    ("orphaned_objects", "orphaned objects", "#d1495b", ""),
    ("orphaned_rows", "orphaned rows", "#edae49", "8 4"),
    ("mismatched", "mismatches", "#00798c", ""),
    ("failed_deletes", "failed deletions", "#6a4c93", "3 5"),
)
WIDTH, HEIGHT, PAD_LEFT, PAD_BOTTOM, PAD_TOP, PAD_RIGHT = 880, 260, 56, 40, 16, 16

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
main{max-width:960px;margin:0 auto;padding:24px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 10px}
.meta{color:#5b6472;margin:0 0 16px}
.cards{display:flex;gap:12px;flex-wrap:wrap}
.card{background:#fff;border:1px solid #dde1e7;border-radius:8px;padding:12px 16px;min-width:150px}
.card b{display:block;font-size:24px}.card span{color:#5b6472}
.card.bad b{color:#b3261e}
section{background:#fff;border:1px solid #dde1e7;border-radius:8px;padding:12px 16px;margin-top:12px}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #eceff3;vertical-align:top}
th{color:#5b6472;font-weight:600}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#1b7f3b}.failed,.refused,.drift{color:#b3261e}
.legend span{display:inline-block;margin-right:16px}
.legend i{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:6px}
.empty{color:#5b6472;font-style:italic}
code{font-size:12px}
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _when(value: Any) -> str:
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M UTC") if value.utcoffset() is not None else value.isoformat()
    return _e(value)


def drift_chart(runs: list[dict[str, Any]]) -> str:
    """An inline SVG line chart of each kind of finding over the runs."""
    if not runs:
        return '<p class="empty">No reconcile run is recorded yet: run <code>trr-assets reconcile</code>.</p>'
    values = [[int(run["counts"].get(key, 0) or 0) for run in runs] for key, _, _, _ in SERIES]
    top = max(1, *(v for series in values for v in series))
    plot_w, plot_h = WIDTH - PAD_LEFT - PAD_RIGHT, HEIGHT - PAD_TOP - PAD_BOTTOM

    def x(i: int) -> float:
        return PAD_LEFT + (plot_w * i / (len(runs) - 1) if len(runs) > 1 else plot_w / 2)

    def y(v: int) -> float:
        return PAD_TOP + plot_h - plot_h * v / top

    parts = [f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" role="img" '
             f'aria-label="Drift findings by kind over {len(runs)} reconcile runs" xmlns="http://www.w3.org/2000/svg">']
    for v in sorted({round(top * step / 4) for step in range(5)}):  # horizontal grid and y labels
        parts.append(f'<line x1="{PAD_LEFT}" x2="{WIDTH - PAD_RIGHT}" y1="{y(v):.1f}" y2="{y(v):.1f}" '
                     f'stroke="#eceff3"/><text x="{PAD_LEFT - 8}" y="{y(v) + 4:.1f}" text-anchor="end" '
                     f'font-size="11" fill="#5b6472">{v}</text>')
    for index in sorted({0, len(runs) - 1, (len(runs) - 1) // 2}):
        anchor = "start" if index == 0 and len(runs) > 1 else "end" if index == len(runs) - 1 > 0 else "middle"
        parts.append(f'<text x="{x(index):.1f}" y="{HEIGHT - 12}" text-anchor="{anchor}" font-size="11" '
                     f'fill="#5b6472">{_when(runs[index]["started_at"])}</text>')
    for (_, label, colour, dashes), series in zip(SERIES, values, strict=True):
        points = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(series))
        dash = f' stroke-dasharray="{dashes}"' if dashes else ""
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2"{dash} points="{points}"/>')
        for i, v in enumerate(series):
            parts.append(f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="3" fill="{colour}">'
                         f'<title>{_e(label)}: {v} (run {_e(runs[i]["id"])}, '
                         f'{_when(runs[i]["started_at"])})</title></circle>')
    parts.append("</svg>")
    legend = "".join(f'<span><i style="background:{colour}"></i>{_e(label)}</span>' for _, label, colour, _ in SERIES)
    return f'<div class="legend">{legend}</div>' + "".join(parts)


def _table(headers: list[str], rows: list[list[str]], *, empty: str, numeric: set[int] | None = None) -> str:
    if not rows:
        return f'<p class="empty">{_e(empty)}</p>'
    numeric = numeric or set()
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f'<td class="n">{cell}</td>' if i in numeric else f"<td>{cell}</td>"
                         for i, cell in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _card(value: Any, label: str, *, bad: bool = False) -> str:
    return f'<div class="card{" bad" if bad else ""}"><b>{_e(value)}</b><span>{_e(label)}</span></div>'


def _counts(counts: dict[str, Any]) -> str:
    shown = {k: v for k, v in counts.items() if isinstance(v, int) and not isinstance(v, bool) and v}
    return _e(", ".join(f"{k} {v}" for k, v in shown.items()) or "nothing to do")


def render(
    *,
    generated_at: datetime,
    source: str,
    buckets: list[str],
    runs: list[dict[str, Any]],
    queue: QueueStatus,
    jobs: list[dict[str, Any]],
) -> str:
    """The whole page."""
    last = runs[-1] if runs else None
    drift_now = sum(int(last["counts"].get(c, 0) or 0) for c in DRIFT_KINDS.values()) if last else 0
    cards = "".join([
        _card(drift_now if last else "none", "findings in the last reconcile", bad=drift_now > 0),
        _card(queue.pending, "deletions pending"),
        _card(queue.failed, "deletions failed", bad=queue.failed > 0),
        _card(age(queue.oldest_age_seconds) if queue.pending else "-", "oldest pending deletion",
              bad=queue.oldest_age_seconds > 3600),
    ])
    run_rows = [
        [_when(r["started_at"]), _e("dry run" if r["dry_run"] else "repair"), _e(", ".join(r["buckets"])),
         f'<span class="{_e(r["outcome"])}">{_e(r["outcome"])}</span>',
         *(_e(r["counts"].get(key, 0)) for key, _, _, _ in SERIES), _e(r["error"] or "")]
        for r in reversed(runs[-20:])
    ]
    failed_rows = [
        [_e(f.bucket), f"<code>{_e(f.key)}</code>", _e(f.attempts), _when(f.updated_at), _e(f.last_error or "")]
        for f in queue.failed_entries
    ]
    job_rows = [
        [_when(j["finished_at"]), _e(j["job"]), f'<span class="{_e(j["outcome"])}">{_e(j["outcome"])}</span>',
         _e(f'{(j["finished_at"] - j["started_at"]).total_seconds():.1f} s'), _counts(j["counts"]),
         _e(j["error"] or ""), _e(j["worker"])]
        for j in jobs
    ]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>trr-assets report</title>
<style>{STYLE}</style></head>
<body><main>
<h1>trr-assets report</h1>
<p class="meta">Generated {_when(generated_at)} · buckets: {_e(", ".join(buckets) or "none configured")}
 · configuration: {_e(source)}</p>
<div class="cards">{cards}</div>
<h2>Drift by kind over the recorded reconcile runs</h2>
<section>{drift_chart(runs)}</section>
<h2>Last reconcile runs</h2>
<section>{_table(["started", "mode", "buckets", "outcome", *(label for _, label, _, _ in SERIES), "error"],
                 run_rows, empty="No reconcile run is recorded yet.", numeric={4, 5, 6, 7})}</section>
<h2>Failed deletions</h2>
<section>{_table(["bucket", "key", "attempts", "gave up", "last error"], failed_rows,
                 empty="None: every queued deletion is done or still being retried.", numeric={2})}
{'<p>Retry them with <code>trr-assets process-deletes --requeue-failed</code>.</p>' if failed_rows else ''}</section>
<h2>Recent job runs</h2>
<section>{_table(["finished", "job", "outcome", "took", "counts", "error", "worker"], job_rows,
                 empty="No job run is recorded yet (the worker records each run that did something).")}</section>
</main></body></html>
"""
