"""Reports stage: index.html, one page that shows a run directory (or a comparison directory).

The page is rendered from Jinja2 templates (report/templates/) and needs nothing from the network:
its style and script are inline, its pictures the files beside it (timeline.png, memory.png,
dag.svg or dag.png, pareto.png); everything else is read from summary.json and, when present,
comparison.md (rendered by markdown-it-py) / comparison.csv. The inline script marks any picture
that fails to load, on the page and in `<body data-images=...>` (the tests read it from Chromium's DOM).
"""

from __future__ import annotations

import csv
import io
import json
from functools import lru_cache
from pathlib import Path

import jinja2
from markdown_it import MarkdownIt
from markupsafe import Markup, escape

from simulator.files import write_atomic
from simulator.report.summary import (
    calibration_line,
    fmt_bytes,
    fmt_s,
    fmt_tpot,
    sampled_note,
    sampling_sentence,
    target_rows,
)

INDEX_FILE = "index.html"

#: Category colours for the share bars (same as the timeline's; kept here so the page needs no matplotlib).
_SHARE_COLOURS = {
    "attention": "#4C72B0",
    "experts": "#DD8452",
    "ffn": "#E5AE38",
    "router": "#937860",
    "norm_residual": "#A5A5A5",
    "embed_head": "#64B5CD",
    "tp_comm": "#55A868",
    "ep_comm": "#C44E52",
    "pp_comm": "#8172B3",
}


@lru_cache(maxsize=1)
def _templates() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("simulator.report", "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )


def _e(value) -> str:
    return str(escape(str(value)))


def _figure(directory: Path, names: tuple[str, ...], caption: str, link: str | None = None) -> dict | None:
    """The first of `names` that exists beside the page, as a figure for the template; None when none does."""
    for name in names:
        if (directory / name).is_file():
            target = (link if link and (directory / link).is_file() else name) if link else None
            return {"src": name, "caption": caption, "link": target}
    return None


def _results(summary: dict) -> list[list[str]]:
    ttft = summary["ttft_s"]
    rows = [
        ["TTFT mean / p50 / p99 / max", " / ".join(fmt_s(ttft[k]) for k in ("mean", "p50", "p99", "max"))],
        ["TPOT (time per output token)", fmt_tpot(summary["tpot_s"]) + sampled_note(summary, "tpot_s")],
        [
            "prefill / decode / total",
            f"{fmt_s(summary['prefill_s'])} / {fmt_s(summary['decode_s'])} / "
            f"{fmt_s(summary['total_s'])}{sampled_note(summary, 'total_s')}",
        ],
    ]
    rows += [[k.replace("_", " "), f"{v:.4g}{sampled_note(summary, k)}"] for k, v in summary["throughput"].items()]
    if summary.get("memory"):
        mem = max(summary["memory"], key=lambda m: m["total_bytes"])
        rows.append(
            [
                "memory (busiest GPU)",
                f"{fmt_bytes(mem['total_bytes'])} = {100 * mem['utilization']:.1f}% of "
                f"{fmt_bytes(mem['capacity_bytes'])} on GPU {mem['gpu']}",
            ]
        )
    return rows


def _targets(summary: dict) -> list[list]:
    return [
        [a, b, c, Markup('<span class="{}">{}</span>').format("met" if d.startswith("MET") else "missed", d)]
        for a, b, c, d in target_rows(summary)
    ]


def _share_bar(shares: dict) -> Markup:
    ordered = sorted(shares.items(), key=lambda kv: (-kv[1], kv[0]))
    parts = [
        Markup('<span title="{} {:.1f}%" style="width:{:.2f}%;background:{}"></span>').format(
            cat, 100 * share, 100 * share, _SHARE_COLOURS.get(cat, "#333")
        )
        for cat, share in ordered
        if share > 0
    ]
    return Markup('<div class="bars">{}</div>').format(Markup("").join(parts))


def _categories_by_share(paths: list[tuple[str, dict]]) -> list[str]:
    """Categories of all paths, largest share of the last (longest) path first."""
    order = {}
    for _, p in paths:
        for c, share in p["shares"].items():
            order[c] = share
    return sorted(order, key=lambda c: (-order[c], c))


def _swatch(cat: str) -> Markup:
    return Markup('<span class="swatch" style="background:{}"></span>{}').format(_SHARE_COLOURS.get(cat, "#333"), cat)


def _critical_path(summary: dict) -> dict | None:
    cp = summary.get("critical_path")
    if not cp:
        return None
    sentences = cp.get("sentences", {})
    paths = [
        (name, cp[key])
        for name, key in (
            ("to the first token (TTFT)", "ttft"),
            ("whole run", "total"),
            ("one decode step (mean)", "decode_step"),
        )
        if key in cp
    ]
    cats = _categories_by_share(paths)
    rows = []
    for name, p in paths:
        length = p.get("length_s", p.get("step_s", 0.0))
        rows.append(
            [name, fmt_s(length), _share_bar(p["shares"])] + [f"{100 * p['shares'].get(c, 0.0):.1f}%" for c in cats]
        )
    return {
        "sentences": [sentences[k] for k in ("ttft", "tpot") if k in sentences],
        "header": ["path", "length", "composition"] + [_swatch(c) for c in cats],
        "rows": rows,
        "classes": ["", "num", ""] + ["num"] * len(cats),
    }


def _audit(summary: dict) -> list[list]:
    cls = {"holds": "holds", "holds only with EP folded": "pending", "does not hold": "fails", "pending": "pending"}
    return [
        [
            a["claim"],
            a["declared"],
            a["computed"],
            Markup('<span class="{}">{}</span>').format(cls.get(a["verdict"], ""), a["verdict"]),
            a["explanation"],
        ]
        for a in summary.get("audit", [])
    ]


def _memory(summary: dict) -> list[list]:
    return [
        [
            m["gpu"],
            fmt_bytes(m["weight_bytes"]),
            fmt_bytes(m["kv_cache_bytes"]),
            fmt_bytes(m["activation_bytes"]),
            fmt_bytes(m["reserve_bytes"]),
            fmt_bytes(m["total_bytes"]),
            f"{100 * m['utilization']:.1f}%",
            "yes" if m["fits"] else "NO",
        ]
        for m in summary.get("memory", [])
    ]


def _verification(summary: dict) -> list[list]:
    return [
        [
            Markup('<span class="{0}">{1}</span>').format("ok" if c["ok"] else "failed", "ok" if c["ok"] else "FAILED"),
            c["check"],
            c["detail"],
        ]
        for c in summary.get("verification", [])
    ]


def markdown_html(text: str) -> Markup:
    """CommonMark with tables (markdown-it-py), raw HTML in the text escaped, not passed through;
    each table in a box that scrolls sideways when it is wider than the page."""
    html = MarkdownIt("commonmark", {"html": False}).enable("table").render(text)
    return Markup(html.replace("<table>", '<div class="wide"><table>').replace("</table>", "</table></div>"))


def _comparison_parts(directory: Path) -> dict:
    """What a comparison shows: comparison.md rendered (or comparison.csv as a table), the CSV link, the Pareto plot."""
    md, table = directory / "comparison.md", directory / "comparison.csv"
    text = md.read_text(errors="replace") if md.is_file() else ""
    rows = [] if text or not table.is_file() else list(csv.reader(io.StringIO(table.read_text(errors="replace"))))
    heading = next((line.lstrip("#").strip() for line in text.splitlines() if line.startswith("# ")), None)
    return {
        "body": markdown_html(text) if text else Markup(""),
        "csv_rows": rows,
        "has_csv": table.is_file(),
        "pareto": _figure(directory, ("pareto.png",), "Pareto front of the layouts compared"),
        "heading": heading,
    }


def _comparison_in_run(directory: Path) -> dict | None:
    """The comparison parts for a run page (None when the directory holds none), headings one level down."""
    parts = _comparison_parts(directory)
    if not (parts["body"] or parts["csv_rows"] or parts["has_csv"] or parts["pareto"]):
        return None
    parts["body"] = Markup(str(parts["body"]).replace("<h1>", "<h3>").replace("</h1>", "</h3>"))
    return parts


def _whatif_in_run(directory: Path) -> Markup | None:
    """The answers of `moesim whatif` kept in the run directory (whatif/whatif.md, rendered, with its plots),
    headings two levels down; None when there are none."""
    md = directory / "whatif" / "whatif.md"
    if not md.is_file():
        return None
    html = str(markdown_html(md.read_text(errors="replace")))
    for level in (2, 1):
        html = html.replace(f"<h{level}>", f"<h{level + 2}>").replace(f"</h{level}>", f"</h{level + 2}>")
    return Markup(html.replace('src="whatif_', 'src="whatif/whatif_'))


_FILES = (
    ("summary.json", "all results, machine-readable"),
    ("summary.md", "the same as Markdown"),
    ("ops.csv", "the engine's trace: one row per simulated operator"),
    ("ops.csv.gz", "the engine's trace: one row per simulated operator (gzip-compressed CSV)"),
    ("trace.json.gz", "Chrome trace: open it in ui.perfetto.dev (it reads .json.gz as it is)"),
    ("trace.json", "Chrome trace: open it in ui.perfetto.dev or chrome://tracing"),
    ("critical_path.csv", "the critical path, one row per operator"),
    ("dag.json", "the operator DAG (node-link JSON)"),
    ("dag.svg", "the folded DAG drawing"),
    ("comparison.csv", "the comparison table"),
)


def index_html(directory: Path, summary: dict | None, title: str | None = None) -> str:
    """The page for a run directory (summary given) or a comparison directory (summary None; its
    title is `title`, else comparison.md's heading, else the directory's name)."""
    directory = Path(directory)
    files = [
        [Markup('<a href="{0}">{0}</a>').format(name), what] for name, what in _FILES if (directory / name).is_file()
    ]
    if summary is None:
        parts = _comparison_parts(directory)
        name = title or parts["heading"] or directory.resolve().name
        return _templates().get_template("compare.html.j2").render(c=parts, title=name)
    dag = _figure(
        directory,
        ("dag.svg", "dag.png"),
        "Operator DAG (folded: one layer of each kind, one decode "
        "step), scaled to the page; click to open it full size",
        link="dag.svg",
    )
    return (
        _templates()
        .get_template("run.html.j2")
        .render(
            title=summary["scenario"],
            s=summary,
            lay=summary["layout"],
            results=_results(summary),
            how=sampling_sentence(summary),
            calibration=calibration_line(summary),
            targets=_targets(summary),
            bottleneck=list(summary.get("bottleneck", {}).values()),
            critical=_critical_path(summary),
            timeline=_figure(
                directory,
                ("timeline.png",),
                "Every GPU stream and link port over time, coloured by "
                "category; white is idle. Top: whole run; middle: prefill; bottom: one decode step.",
            ),
            memory_figure=_figure(directory, ("memory.png",), "Memory per GPU over time against its capacity"),
            memory=_memory(summary),
            audit=_audit(summary),
            compared=_comparison_in_run(directory),
            whatif=_whatif_in_run(directory),
            dag=dag,
            verification=_verification(summary),
            files=files,
        )
    )


def write_index(directory: Path, summary: dict | None = None, title: str | None = None) -> Path:
    """Write index.html into `directory` (reading summary.json there when `summary` is None)."""
    directory = Path(directory)
    if summary is None and (directory / "summary.json").is_file():
        summary = json.loads((directory / "summary.json").read_text())
    path = directory / INDEX_FILE
    write_atomic(path, index_html(directory, summary, title))
    return path
