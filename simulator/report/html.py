"""Reports stage: index.html, one page that shows a run directory (or a comparison directory).

The page is self-contained apart from the pictures, which it references beside it (timeline.png,
memory.png, dag.svg or dag.png, pareto.png): everything else is read from summary.json and, when
present, comparison.csv / comparison.md. A small inline script marks any picture that fails to
load, on the page and in `<body data-images=...>` (the tests read it from Chromium's DOM).
"""

from __future__ import annotations

import csv
import html
import io
import json
import re
from pathlib import Path

from simulator.files import write_atomic
from simulator.report.summary import fmt_bytes, fmt_s, fmt_tpot, target_rows

INDEX_FILE = "index.html"

_CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 0 auto; max-width: 1600px;
       padding: 1em 2em 3em; color: #222; line-height: 1.4; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { font-size: 1.2em; margin-top: 1.8em;
     border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; white-space: nowrap; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.met, .holds, .ok { color: #1a7f37; font-weight: 600; } .missed, .fails, .failed { color: #c62828; font-weight: 600; }
.pending { color: #a66f00; font-weight: 600; }
.lead { color: #555; margin-top: 0; } .sentences li { margin: 0.3em 0; }
figure { margin: 0.8em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; }
.missing-image { color: #c62828; font-weight: 600; }
.bars { display: flex; width: 320px; height: 0.9em; margin-top: 0.25em; background: #f4f4f4; }
.bars span { display: block; height: 100%; }
.swatch { display: inline-block; width: 0.8em; height: 0.8em; margin-right: 0.3em; vertical-align: -0.05em; }
.scroll { max-height: 900px; overflow: auto; border: 1px solid #eee; }
.scroll img { max-width: none; border: 0; }
nav a { margin-right: 1em; }
"""

_SCRIPT = """
window.addEventListener('load', function () {
  var missing = [];
  document.querySelectorAll('img').forEach(function (img) {
    if (!(img.complete && img.naturalWidth > 0)) {
      missing.push(img.getAttribute('src'));
      var note = document.createElement('p');
      note.className = 'missing-image';
      note.textContent = 'Picture missing: ' + img.getAttribute('src') + ' (run `moesim plot` on this directory)';
      img.replaceWith(note);
    }
  });
  document.body.dataset.images = missing.length ? 'missing: ' + missing.join(' ') :
    'ok ' + document.querySelectorAll('img').length;
});
"""

#: Category colours for the share bars (same as the timeline's; kept here so the page needs no matplotlib).
_SHARE_COLOURS = {
    "attention": "#4C72B0", "experts": "#DD8452", "ffn": "#E5AE38", "router": "#937860",
    "norm_residual": "#A5A5A5", "embed_head": "#64B5CD", "tp_comm": "#55A868", "ep_comm": "#C44E52",
    "pp_comm": "#8172B3",
}


def _e(value) -> str:
    return html.escape(str(value))


def _table(header: list[str], rows: list[list], classes: list[str] | None = None, raw: bool = False) -> str:
    """A table; cells (and header) are escaped unless raw. `classes`: per column CSS class ('' for none)."""
    classes = classes or [""] * len(header)
    out = ["<table>", "<tr>" + "".join(f"<th>{h if raw else _e(h)}</th>" for h in header) + "</tr>"]
    for row in rows:
        cells = []
        for value, cls in zip(row, classes):
            text = value if raw else _e(value)
            cells.append(f'<td class="{cls}">{text}</td>' if cls else f"<td>{text}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _figure(directory: Path, names: tuple[str, ...], caption: str, link: str | None = None,
            scroll: bool = False) -> str:
    """The first of `names` that exists beside the page, as a figure; '' when none does."""
    for name in names:
        if (directory / name).is_file():
            img = f'<img src="{_e(name)}" alt="{_e(caption)}" loading="eager">'
            if link:
                img = f'<a href="{_e(link if (directory / link).is_file() else name)}">{img}</a>'
            if scroll:
                img = f'<div class="scroll">{img}</div>'
            return f"<figure>{img}<figcaption>{_e(caption)}</figcaption></figure>"
    return ""


def _results(summary: dict) -> str:
    ttft = summary["ttft_s"]
    rows = [
        ["TTFT mean / p50 / p99 / max", " / ".join(fmt_s(ttft[k]) for k in ("mean", "p50", "p99", "max"))],
        ["TPOT (time per output token)", fmt_tpot(summary["tpot_s"])],
        ["prefill / decode / total", f"{fmt_s(summary['prefill_s'])} / {fmt_s(summary['decode_s'])} / "
                                     f"{fmt_s(summary['total_s'])}"],
    ]
    rows += [[k.replace("_", " "), f"{v:.4g}"] for k, v in summary["throughput"].items()]
    if summary.get("memory"):
        mem = max(summary["memory"], key=lambda m: m["total_bytes"])
        rows.append(["memory (busiest GPU)", f"{fmt_bytes(mem['total_bytes'])} = {100 * mem['utilization']:.1f}% of "
                                             f"{fmt_bytes(mem['capacity_bytes'])} on GPU {mem['gpu']}"])
    return _table(["metric", "value"], rows, ["", "num"])


def _targets(summary: dict) -> str:
    if not summary.get("targets"):
        return "<p>No targets declared.</p>"
    rows = [[_e(a), _e(b), _e(c), f'<span class="{"met" if d == "MET" else "missed"}">{_e(d)}</span>']
            for a, b, c, d in target_rows(summary)]
    return _table(["target", "limit", "actual", "verdict"], rows, ["", "num", "num", ""], raw=True)


def _share_bar(shares: dict) -> str:
    ordered = sorted(shares.items(), key=lambda kv: (-kv[1], kv[0]))
    parts = [f'<span title="{_e(cat)} {100 * share:.1f}%" style="width:{100 * share:.2f}%;'
             f'background:{_SHARE_COLOURS.get(cat, "#333")}"></span>' for cat, share in ordered if share > 0]
    return f'<div class="bars">{"".join(parts)}</div>'


def _categories_by_share(paths: list[tuple[str, dict]]) -> list[str]:
    """Categories of all paths, largest share of the last (longest) path first."""
    order = {}
    for _, p in paths:
        for c, share in p["shares"].items():
            order[c] = share
    return sorted(order, key=lambda c: (-order[c], c))


def _swatch(cat: str) -> str:
    return f'<span class="swatch" style="background:{_SHARE_COLOURS.get(cat, "#333")}"></span>{_e(cat)}'



def _critical_path(summary: dict) -> str:
    cp = summary.get("critical_path")
    if not cp:
        return ""
    out = ["<h2 id='critical-path'>Critical path</h2>",
           "<p class='lead'>The chain of operations that sets the time: walking back from the last token (or the "
           "first token), each op's start is the end of a predecessor it needed or of the op that held its "
           "stream or link. Shares are of the path's length.</p>", "<ul class='sentences'>"]
    sentences = cp.get("sentences", {})
    out += [f"<li>{_e(sentences[k])}</li>" for k in ("ttft", "tpot") if k in sentences]
    out.append("</ul>")
    paths = [(name, cp[key]) for name, key in (("to the first token (TTFT)", "ttft"), ("whole run", "total"),
                                               ("one decode step (mean)", "decode_step")) if key in cp]
    cats = _categories_by_share(paths)
    header = ["path", "length", "composition"] + [_swatch(c) for c in cats]
    rows = []
    for name, p in paths:
        length = p.get("length_s", p.get("step_s", 0.0))
        rows.append([_e(name), _e(fmt_s(length)), _share_bar(p["shares"])]
                    + [f"{100 * p['shares'].get(c, 0.0):.1f}%" for c in cats])
    out.append(_table(header, rows, ["", "num", ""] + ["num"] * len(cats), raw=True))
    return "\n".join(out)


def _audit(summary: dict) -> str:
    if not summary.get("audit"):
        return ""
    cls = {"holds": "holds", "holds only with EP folded": "pending", "does not hold": "fails", "pending": "pending"}
    rows = [[_e(a["claim"]), _e(a["declared"]), _e(a["computed"]),
             f'<span class="{cls.get(a["verdict"], "")}">{_e(a["verdict"])}</span>', _e(a["explanation"])]
            for a in summary["audit"]]
    return "<h2 id='audit'>Claim audit</h2>\n" + _table(["claim", "declared", "computed", "verdict", "why"], rows,
                                                        raw=True)


def _memory(summary: dict) -> str:
    rows = [[m["gpu"], fmt_bytes(m["weight_bytes"]), fmt_bytes(m["kv_cache_bytes"]), fmt_bytes(m["activation_bytes"]),
             fmt_bytes(m["reserve_bytes"]), fmt_bytes(m["total_bytes"]), f"{100 * m['utilization']:.1f}%",
             "yes" if m["fits"] else "NO"] for m in summary.get("memory", [])]
    return _table(["GPU", "weights", "KV cache", "activations", "reserve", "total", "of capacity", "fits"], rows,
                  ["num"] * 7 + [""])


def _verification(summary: dict) -> str:
    rows = [[f'<span class="{"ok" if c["ok"] else "failed"}">{"ok" if c["ok"] else "FAILED"}</span>', _e(c["check"]),
             _e(c["detail"])] for c in summary.get("verification", [])]
    return _table(["result", "check", "detail"], rows, raw=True) if rows else ""


def _markdown(text: str) -> str:
    """Just enough Markdown for comparison.md: headings, pipe tables, bullets, paragraphs,
    `code` and **bold**."""

    def inline(s: str) -> str:
        s = _e(s)
        s = re.sub(r"`([^`]+)`", r"<code>\1</code>", s)
        return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", s)

    out, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        line = lines[i].rstrip()
        if line.startswith("#"):
            level = min(len(line) - len(line.lstrip("#")) + 1, 4)
            out.append(f"<h{level}>{inline(line.lstrip('#').strip())}</h{level}>")
        elif line.startswith("|"):
            block = []
            while i < len(lines) and lines[i].startswith("|"):
                block.append([c.strip() for c in lines[i].strip().strip("|").split("|")])
                i += 1
            body = [r for r in block[1:] if not all(re.fullmatch(r":?-+:?", c) for c in r)]
            out.append(_table(block[0], [[inline(c) for c in r] for r in body], raw=True))
            continue
        elif line.lstrip().startswith(("- ", "* ")):
            items = []
            while i < len(lines) and lines[i].lstrip().startswith(("- ", "* ")):
                items.append(f"<li>{inline(lines[i].lstrip()[2:])}</li>")
                i += 1
            out.append("<ul>" + "".join(items) + "</ul>")
            continue
        elif line.strip():
            out.append(f"<p>{inline(line)}</p>")
        i += 1
    return "\n".join(out)


def _comparison(directory: Path) -> str:
    parts = []
    md, table = directory / "comparison.md", directory / "comparison.csv"
    if md.is_file():
        parts.append(_markdown(md.read_text(errors="replace")))
    elif table.is_file():
        rows = list(csv.reader(io.StringIO(table.read_text(errors="replace"))))
        if rows:
            parts.append(_table(rows[0], rows[1:]))
    if table.is_file():
        parts.append('<p><a href="comparison.csv">comparison.csv</a></p>')
    parts.append(_figure(directory, ("pareto.png",), "Pareto front of the layouts compared"))
    body = "\n".join(p for p in parts if p)
    return f"<h2 id='comparison'>Comparison</h2>\n{body}" if body else ""


_FILES = (
    ("summary.json", "all results, machine-readable"),
    ("summary.md", "the same as Markdown"),
    ("ops.csv", "the engine's trace: one row per operator"),
    ("trace.json", "Chrome trace: open it in ui.perfetto.dev or chrome://tracing"),
    ("critical_path.csv", "the critical path, one row per operator"),
    ("dag.json", "the operator DAG (node-link JSON)"),
    ("dag.svg", "the folded DAG drawing"),
    ("comparison.csv", "the comparison table"),
)


def index_html(directory: Path, summary: dict | None) -> str:
    """The page for a run directory (summary given) or a comparison directory (summary None)."""
    directory = Path(directory)
    body = []
    if summary is not None:
        lay, w = summary["layout"], summary["workload"]
        body.append(f"<h1>moesim run: {_e(summary['scenario'])}</h1>")
        body.append(f"<p class='lead'>Model <code>{_e(summary['model'])}</code> on {lay['num_gpus']} x "
                    f"<code>{_e(lay['hardware'])}</code>, TP={lay['tp']} EP={lay['ep']} ETP={lay.get('etp', 1)} "
                    f"PP={lay['pp']} DP={lay['dp']}, {lay['microbatches']} microbatch(es), {_e(lay['mode'])} decode. "
                    f"Workload: batch {w['batch_size']}, input {w['input_len_tokens']}, output "
                    f"{w['output_len_tokens']} tokens.</p>")
        body.append("<nav><a href='#results'>results</a><a href='#critical-path'>critical path</a>"
                    "<a href='#timeline'>timeline</a><a href='#memory'>memory</a><a href='#audit'>claim audit</a>"
                    "<a href='#dag'>DAG</a><a href='#files'>files</a></nav>")
        body.append("<h2 id='results'>Results</h2>")
        body.append(_results(summary))
        body.append("<h3>Targets</h3>" + _targets(summary))
        body.append("<h3>What bounds the run</h3><ul class='sentences'>"
                    + "".join(f"<li>{_e(s)}</li>" for s in summary.get("bottleneck", {}).values()) + "</ul>")
        body.append(_critical_path(summary))
        body.append("<h2 id='timeline'>Timeline</h2>")
        body.append(_figure(directory, ("timeline.png",), "Every GPU stream and link port over time, coloured by "
                            "category; white is idle. Top: whole run; middle: prefill; bottom: one decode step."))
        body.append("<h2 id='memory'>Memory</h2>")
        body.append(_figure(directory, ("memory.png",), "Memory per GPU over time against its capacity"))
        body.append(_memory(summary))
        body.append(_audit(summary))
    else:
        body.append(f"<h1>moesim comparison: {_e(directory.resolve().name)}</h1>")
    body.append(_comparison(directory))
    if summary is not None:
        dag = _figure(directory, ("dag.svg", "dag.png"), "Operator DAG (folded: one layer of each kind, one "
                      "decode step); scroll, or click to open it full size", link="dag.svg", scroll=True)
        body.append("<h2 id='dag'>Operator DAG</h2>" + (dag or "<p>Not drawn (run without --no-dag).</p>"))
        body.append("<h3>DAG verification</h3>" + _verification(summary))
    files = [[f'<a href="{_e(name)}">{_e(name)}</a>', _e(what)] for name, what in _FILES if (directory / name).is_file()]
    if files:
        body.append("<h2 id='files'>Files</h2>" + _table(["file", "what"], files, raw=True))
    title = summary["scenario"] if summary is not None else directory.resolve().name
    return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>moesim: {_e(title)}</title>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<style>{_CSS}</style><script>{_SCRIPT}</script></head>\n<body>\n"
            + "\n".join(b for b in body if b) + "\n</body></html>\n")


def write_index(directory: Path, summary: dict | None = None) -> Path:
    """Write index.html into `directory` (reading summary.json there when `summary` is None)."""
    directory = Path(directory)
    if summary is None and (directory / "summary.json").is_file():
        summary = json.loads((directory / "summary.json").read_text())
    path = directory / INDEX_FILE
    write_atomic(path, index_html(directory, summary))
    return path
