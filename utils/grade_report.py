"""The grader's output: ``grades.csv`` (one row per hand-in) and ``report.html`` (a static page a TA opens).

The page is one file beside a ``thumbs/`` folder of images we re-encoded: a table that sorts by any
column (a click on its header), each student's grids as thumbnails, and every flagged pair of students
with their matching images side by side. Everything a hand-in supplies (names, messages) is escaped;
the page loads nothing from outside, and its one script runs under a Content-Security-Policy hash.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import html
import os
import time
from pathlib import Path

CSV_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")   # a cell starting so runs as a formula in a spreadsheet


def _fmt(value, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _copies(batch, k: int) -> list[tuple[object, float]]:
    """(other row, score) for every flagged pair that row ``k`` is in."""
    out = []
    for pair in batch.pairs:
        if k in (pair.a, pair.b):
            out.append((batch.rows[pair.b if pair.a == k else pair.a], pair.score))
    return out


def csv_rows(batch) -> tuple[list[str], list[dict]]:
    """The CSV's header and rows (plain values, before any escaping)."""
    iclevr = batch.grader.assignment == "iclevr"
    header = ["student", "submission", "status"]
    if iclevr:
        header += ["test_accuracy", "new_test_accuracy", "test_hits", "new_test_hits", "claimed_test",
                   "claimed_new_test"]
    header += ["flags", "copies_of", "problems", "notes", "sha256"]
    rows = []
    for k, row in enumerate(batch.rows):
        out = {"student": row.student, "submission": row.submission, "status": row.status}
        if iclevr:
            for name in ("test", "new_test"):
                score = row.scores.get(name, {})
                out[f"{name}_accuracy"] = _fmt(score.get("accuracy"))
                out[f"{name}_hits"] = f"{score['hits']}/{score['labels']}" if score else ""
                out[f"claimed_{name}"] = _fmt(score.get("claimed"))
        out.update(flags=" ".join(row.flags),
                   copies_of="; ".join(f"{other.student} ({score:.2f})" for other, score in _copies(batch, k)),
                   problems="; ".join(row.problems), notes="; ".join(n.message for n in row.notes),
                   sha256=row.sha256)
        rows.append(out)
    return header, rows


def _cell(value: str) -> str:
    """A CSV cell that a spreadsheet shows as text, never runs as a formula."""
    return "'" + value if isinstance(value, str) and value.startswith(CSV_FORMULA_START) else value


def write_csv(batch, path: str | Path) -> Path:
    """``grades.csv``: one row per hand-in; written to a temp file and renamed."""
    path = Path(path)
    header, rows = csv_rows(batch)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        writer.writerows({k: _cell(v) for k, v in row.items()} for row in rows)
    os.replace(tmp, path)
    return path


# ----------------------------------------------------------------------------- HTML
STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; width: 100%; }
th, td { border-bottom: 1px solid #ddd; padding: 6px 8px; vertical-align: top; text-align: left; }
th { background: #f3f3f3; cursor: pointer; position: sticky; top: 0; white-space: nowrap; }
th[aria-sort=ascending]::after { content: " ▲"; } th[aria-sort=descending]::after { content: " ▼"; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.status { font-weight: 600; padding: 1px 6px; border-radius: 4px; }
.status-ok { background: #d8f3dc; } .status-incomplete { background: #ffe8a3; }
.status-rejected, .status-error { background: #ffc9c9; }
.flag { display: inline-block; background: #eee; border-radius: 3px; padding: 0 4px; margin: 1px; font-size: 12px; }
.flag.copy, .flag.training_copy, .flag.accuracy_mismatch, .flag.unsafe_path { background: #ffc9c9; }
tr.flagged td:first-child { border-left: 4px solid #e03131; }
ul { margin: 0; padding-left: 1.1em; } li.problem { color: #a61e1e; }
img.thumb { max-width: 150px; max-height: 120px; image-rendering: pixelated; margin: 2px; border: 1px solid #ccc;
            vertical-align: top; }
td.thumbs { white-space: nowrap; } td.notes { min-width: 320px; }
.pair { border: 1px solid #ddd; border-radius: 6px; padding: 8px 12px; margin: 12px 0; }
.matches { display: flex; flex-wrap: wrap; gap: 10px; }
figure { margin: 0; text-align: center; font-size: 11px; }
.cell { display: inline-block; border: 1px solid #999; margin: 1px; image-rendering: pixelated; }
.small { color: #666; font-size: 12px; }
"""

SCRIPT = """
document.querySelectorAll('#grades th').forEach(function (th, col) {
  th.addEventListener('click', function () {
    var body = th.closest('table').tBodies[0];
    var up = th.getAttribute('aria-sort') !== 'ascending';
    th.closest('tr').querySelectorAll('th').forEach(function (h) { h.removeAttribute('aria-sort'); });
    th.setAttribute('aria-sort', up ? 'ascending' : 'descending');
    var key = function (row) {
      var cell = row.cells[col], v = cell.getAttribute('data-sort');
      if (v === null) { v = cell.textContent.trim(); }
      var n = parseFloat(v);
      return v !== '' && !isNaN(n) && isFinite(v) ? [0, n] : [1, v.toLowerCase()];
    };
    Array.from(body.rows).sort(function (a, b) {
      var x = key(a), y = key(b);
      var c = x[0] - y[0] || (x[1] < y[1] ? -1 : x[1] > y[1] ? 1 : 0);
      return up ? c : -c;
    }).forEach(function (row) { body.appendChild(row); });
  });
});
"""

TITLES = {"iclevr": "DLP iCLEVR lab", "imvfx": "IMVFX HW2-2 (DDPM)"}
ATTENTION = {"copy", "training_copy", "accuracy_mismatch", "unsafe_path", "duplicate_id"}


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _csp() -> str:
    digest = base64.b64encode(hashlib.sha256(SCRIPT.encode()).digest()).decode()
    return (f"default-src 'none'; img-src 'self' file: data:; style-src 'unsafe-inline'; "
            f"script-src 'sha256-{digest}'; base-uri 'none'; form-action 'none'")


def _sprite(sheet: dict, k: int, size: int = 64) -> str:
    """Image ``k`` of a contact sheet, shown ``size`` px wide (a CSS background offset into the sheet)."""
    columns = sheet["columns"]
    x, y = (k % columns) * size, (k // columns) * size
    return (f'<span class="cell" style="width:{size}px;height:{size}px;background-image:url(\'{_e(sheet["path"])}\');'
            f'background-position:-{x}px -{y}px;background-size:{columns * size}px auto"></span>')


def _row_html(batch, k: int, row) -> str:
    iclevr = batch.grader.assignment == "iclevr"
    flagged = ATTENTION & set(row.flags)
    cells = [f'<td data-sort="{_e(row.student)}"><b>{_e(row.student)}</b><br><span class="small">{_e(row.submission)}'
             f'</span></td>',
             f'<td data-sort="{_e(row.status)}"><span class="status status-{_e(row.status)}">{_e(row.status)}</span></td>']
    if iclevr:
        for name in ("test", "new_test"):
            score = row.scores.get(name)
            if score:
                claimed = score.get("claimed")
                cells.append(f'<td class="num" data-sort="{score["accuracy"]:.6f}">{score["accuracy"]:.4f}<br>'
                             f'<span class="small">{score["hits"]}/{score["labels"]}'
                             + (f" · claims {claimed:.4f}" if claimed is not None else "") + "</span></td>")
            else:
                cells.append('<td class="num" data-sort="-1">—</td>')
    flags = "".join(f'<span class="flag {_e(f)}">{_e(f)}</span>' for f in row.flags)
    cells.append(f'<td data-sort="{len(flagged)}">{flags}</td>')
    items = [f'<li class="problem">{_e(p)}</li>' for p in row.problems]
    items += [f'<li{" class=problem" if n.problem else ""}>{_e(n.message)}</li>' for n in row.notes]
    cells.append(f'<td class="notes" data-sort="{len(row.problems)}"><ul>{"".join(items)}</ul></td>')
    thumbs = "".join(f'<a href="{_e(path)}"><img class="thumb" loading="lazy" src="{_e(path)}" alt="{_e(caption)}" '
                     f'title="{_e(caption)}"></a>' for caption, path in row.thumbs.items())
    cells.append(f'<td class="thumbs">{thumbs or "—"}</td>')
    return f'<tr id="row-{k}" class="{"flagged" if flagged else ""}">{"".join(cells)}</tr>'


def _pair_html(batch, pair, most: int = 16) -> str:
    a, b = batch.rows[pair.a], batch.rows[pair.b]
    figures = []
    for m in pair.matches[:most]:
        figures.append(f"<figure>{_sprite(a.sheet, m.i)}{_sprite(b.sheet, m.j)}<figcaption>"
                       f"{_e(a.images.names[m.i])} ↔ {_e(b.images.names[m.j])}<br>{m.distance} bits</figcaption></figure>")
    more = f'<p class="small">… and {len(pair.matches) - most} more matching images.</p>' if len(pair.matches) > most else ""
    grids = "".join(f'<div><b>{_e(r.student)}</b><br>' + "".join(
        f'<img class="thumb" src="{_e(p)}" alt="{_e(c)}" title="{_e(c)}">' for c, p in r.thumbs.items()) + "</div>"
        for r in (a, b))
    return (f'<div class="pair"><h3><a href="#row-{pair.a}">{_e(a.student)}</a> ↔ <a href="#row-{pair.b}">'
            f'{_e(b.student)}</a>: {len(pair.matches)} of {pair.compared} images match (score {pair.score:.2f})</h3>'
            f'<div class="matches">{"".join(figures)}</div>{more}<div class="matches">{grids}</div></div>')


def _training_html(batch, k: int, found: list) -> str:
    row = batch.rows[k]
    items = "".join(f"<figure>{_sprite(row.sheet, i)}<figcaption>{_e(row.images.names[i])}<br>≈ {_e(file)}"
                    f"<br>{d} bits</figcaption></figure>" for i, file, d in found[:16])
    return (f'<div class="pair"><h3><a href="#row-{k}">{_e(row.student)}</a>: {len(found)} generated images are '
            f'training images</h3><div class="matches">{items}</div></div>')


def render_html(batch) -> str:
    """The report page as a string."""
    grader = batch.grader
    iclevr = grader.assignment == "iclevr"
    header = ["student", "status"] + (["test", "new_test"] if iclevr else []) + ["flags", "problems and notes",
                                                                                  "hand-in images"]
    counts = ", ".join(f"{n} {s}" for s, n in sorted(batch.counts().items()))
    setup = []
    if iclevr:
        setup.append(f"evaluator sha256 {grader.evaluator_sha256[:12]}…, label files sha256 "
                     f"{grader.label_files_sha256[:12]}…; accuracy = hits / labels over each whole set, a missing "
                     "image scoring no hit")
    copies = "".join(_pair_html(batch, p) for p in batch.pairs) or "<p>No pair of students has matching image sets.</p>"
    training = "".join(_training_html(batch, k, f) for k, f in batch.training.items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{_csp()}">
<title>{_e(TITLES[grader.assignment])}: grades</title><style>{STYLE}</style></head>
<body>
<h1>{_e(TITLES[grader.assignment])}: {len(batch.rows)} hand-ins</h1>
<p>{_e(counts)}; <a href="#copies">{len(batch.pairs)} possible copy pair{"s" * (len(batch.pairs) != 1)}</a>.
Graded {_e(time.strftime("%Y-%m-%d %H:%M"))} by <code>python -m utils.grade {_e(grader.assignment)}</code>.
{_e("; ".join(setup) + ".") if setup else ""} Click a column header to sort.</p>
<table id="grades"><thead><tr>{"".join(f"<th>{_e(h)}</th>" for h in header)}</tr></thead>
<tbody>
{chr(10).join(_row_html(batch, k, row) for k, row in enumerate(batch.rows))}
</tbody></table>
<h2 id="copies">Possible copies</h2>
<p class="small">Pairs whose image sets are near-identical (perceptual hashes; re-saved, resized, re-compressed or
reordered copies included): matching images side by side, then both students' grids.</p>
{copies}
{"<h2 id='training'>Generated images that are training images</h2>" + training if training else ""}
<script>{SCRIPT}</script>
</body></html>
"""


def write_html(batch, path: str | Path) -> Path:
    """``report.html`` beside the ``thumbs/`` folder; written to a temp file and renamed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(render_html(batch), encoding="utf-8")
    os.replace(tmp, path)
    return path
