"""Render an ``AuditResult`` into one self-contained HTML file (figures embedded as data URIs).

The page needs no network: no external scripts, fonts or style sheets. Each stage becomes a
section with its status, message, notes, tables and figures. Only figures inside ``figures_dir``
are read (a name with ``..`` or an absolute path is refused).
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hardened._util.paths import inside

if TYPE_CHECKING:
    from hardened.audit import AuditResult, StageResult, Table

__all__ = ["render_audit_html"]

_CSS = """
:root { --ok:#1b7f3b; --warn:#a15c00; --bad:#b3261e; --ink:#1d2330; --muted:#5b6472; --line:#e3e6eb; }
* { box-sizing: border-box; }
body { margin:0; font:15px/1.55 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif; color:var(--ink); background:#f6f7f9; }
header { background:#1d2330; color:#fff; padding:28px 40px 22px; }
header h1 { margin:0 0 6px; font-size:26px; letter-spacing:.2px; }
header .meta { color:#c7cdd8; font-size:13px; }
nav { position:sticky; top:0; background:#fff; border-bottom:1px solid var(--line); padding:10px 40px; z-index:2; }
nav a { margin-right:18px; color:#2a5db0; text-decoration:none; font-size:14px; white-space:nowrap; }
main { max-width:1100px; margin:0 auto; padding:24px 40px 60px; }
.verdict { background:#fff; border-left:5px solid #2a5db0; padding:16px 20px; border-radius:6px; box-shadow:0 1px 3px rgba(0,0,0,.06); font-size:16px; }
section { background:#fff; margin-top:26px; padding:18px 24px 22px; border-radius:8px; box-shadow:0 1px 3px rgba(0,0,0,.06); }
section h2 { margin:0 0 10px; font-size:20px; display:flex; align-items:center; gap:10px; }
.badge { font-size:12px; padding:2px 9px; border-radius:10px; color:#fff; font-weight:600; text-transform:uppercase; letter-spacing:.5px; }
.badge.ok { background:var(--ok); } .badge.skipped { background:var(--warn); } .badge.failed { background:var(--bad); }
.message { color:var(--warn); margin:6px 0 12px; }
.seconds { color:var(--muted); font-size:12px; font-weight:400; margin-left:auto; }
.tables { display:flex; flex-wrap:wrap; gap:6px 34px; align-items:flex-start; }
.table h3 { font-size:14px; margin:10px 0 4px; color:var(--muted); }
table { border-collapse:collapse; margin:0 0 14px; font-size:14px; }
th, td { border-bottom:1px solid var(--line); padding:5px 12px; text-align:left; vertical-align:top; }
th { background:#f0f2f5; font-weight:600; }
td.pass { color:var(--ok); font-weight:600; } td.flagged { color:var(--bad); font-weight:600; }
.figures { display:flex; flex-wrap:wrap; gap:18px; }
figure { margin:0; max-width:100%; flex:0 1 auto; }
figure.small img { max-width:480px; }
figure img { max-width:100%; height:auto; border:1px solid var(--line); border-radius:4px; }
figcaption { font-size:13px; color:var(--muted); margin-top:4px; }
footer { color:var(--muted); font-size:12px; text-align:center; padding:20px; }
"""


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return html.escape(f"{value:.4g}")
    return html.escape(str(value))


def _table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table.columns)
    rows = []
    for row in table.rows:
        cells = []
        for value in row:
            css = f' class="{value}"' if value in ("pass", "flagged") else ""
            cells.append(f"<td{css}>{_cell(value)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<div class="table"><h3>{html.escape(table.title)}</h3><table><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></div>")


def _figure(caption: str, figures_dir: Path, name: str) -> str:
    path = inside(figures_dir, name)
    if path is None:
        return f'<p class="message">figure {html.escape(name)} is outside the report folder: not shown</p>'
    if not path.is_file():
        return f'<p class="message">figure {html.escape(path.name)} is missing</p>'
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    alt = html.escape(caption)
    wide = caption.lower().startswith(("examples", "gallery", "animation"))
    return (f'<figure class="{"wide" if wide else "small"}"><img src="data:image/png;base64,{data}" '
            f'alt="{alt}"><figcaption>{alt}</figcaption></figure>')


def _section(stage: StageResult, figures_dir: Path) -> str:
    parts = [
        f'<section id="{html.escape(stage.name)}" data-stage="{html.escape(stage.name)}">',
        f'<h2>{html.escape(stage.title)} <span class="badge {stage.status}">{stage.status}</span>'
        f'<span class="seconds">{stage.seconds:.1f} s</span></h2>',
    ]
    if stage.message:
        parts.append(f'<p class="message">{html.escape(stage.message)}</p>')
    for paragraph in stage.notes:
        parts.append(f"<p>{html.escape(paragraph)}</p>")
    if stage.tables:
        parts.append('<div class="tables">' + "".join(_table(t) for t in stage.tables) + "</div>")
    if stage.figures:
        parts.append('<div class="figures">')
        parts += [_figure(caption, figures_dir, name) for caption, name in stage.figures.items()]
        parts.append("</div>")
    parts.append("</section>")
    return "\n".join(parts)


def render_audit_html(result: AuditResult, figures_dir: Path) -> str:
    """The report as one HTML string; PNGs from ``figures_dir`` are embedded."""
    nav = "".join(f'<a href="#{html.escape(s.name)}">{html.escape(s.title)}</a>' for s in result.stages)
    sections = "\n".join(_section(stage, figures_dir) for stage in result.stages)
    meta = (f"model {html.escape(result.model)} · data {html.escape(result.data)} · budget "
            f"{html.escape(result.budget)} · seed {result.seed} · {result.seconds:.0f} s")
    access = result.access
    if access.get("kind"):
        meta += f" · access {html.escape(str(access['kind']))}"
        if access.get("lrp"):
            meta += f" (LRP not applicable: {html.escape(str(access['lrp']))})"
    if result.queries is not None:
        meta += f" · {result.queries:,} images sent to the model"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>hardened audit: {html.escape(result.model)}</title>
<link rel="icon" href="data:,">
<style>{_CSS}</style></head>
<body>
<header><h1>Robustness audit</h1><div class="meta">{meta}</div></header>
<nav>{nav}</nav>
<main>
<p class="verdict" id="verdict">{html.escape(result.verdict)}</p>
{sections}
</main>
<footer>Written by hardened (audit schema {result.schema_version}). Every number comes from the library's own API; audit.json beside this file has them all.</footer>
</body></html>
"""
