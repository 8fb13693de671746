"""Reports stage, serving page: index.html of a `moesim serve` directory, offline and self-contained apart
from the pictures, which it references beside it; the figures are read from summary.json's dict."""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from simulator.files import write_atomic
from simulator.report.serving_summary import (
    LATENCY_TEXT,
    THROUGHPUT_ROWS,
    engine_check_line,
    format_value,
    headline,
    host_line,
    launches_line,
    lockstep_line,
    max_rate_sentence,
    prefix_cache_line,
    target_rows,
    turns_line,
)
from simulator.report.summary import calibration_line
from simulator.serving.stats import LATENCY_METRICS, STATISTICS

INDEX_FILE = "index.html"
#: (file, caption) of each picture, in page order; a missing file is left out.
PICTURES = (
    ("latency_cdf.png", "TTFT and TPOT distributions of the measured requests; targets dashed"),
    ("timeseries.png", "Queue, running batch, KV cache and throughput over time"),
    ("gantt.png", "The first requests: queued, prefill and decode"),
    ("rate_curve.png", "Throughput against p99 latency at each arrival rate tried; the max rate ringed"),
)

_CSS = """
body { font-family: system-ui, sans-serif; margin: 0 auto; max-width: 1500px; padding: 1em 2em 3em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.9em; } th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; }
th { background: #f3f3f3; text-align: left; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.met { color: #1a7f37; font-weight: 600; } .missed { color: #c62828; font-weight: 600; }
figure { margin: 0.8em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; } .lead { color: #555; }
"""


def _e(value) -> str:
    return html.escape(str(value))


def _table(header: list[str], rows: list[list[str]], numeric_from: int = 1) -> str:
    out = ["<table>", "<tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr>"]
    for row in rows:
        cells = [
            f'<td class="num">{_e(v)}</td>' if i >= numeric_from else f"<td>{_e(v)}</td>" for i, v in enumerate(row)
        ]
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "\n".join(out + ["</table>"])


def _targets(summary: dict) -> str:
    rows = target_rows(summary)
    if not rows:
        return "<p>No targets given (serving.targets).</p>"
    out = ["<table>", "<tr><th>target</th><th>limit</th><th>actual</th><th>verdict</th></tr>"]
    for a, b, c, d in rows:
        cls = "met" if d == "MET" else "missed"
        out.append(
            f'<tr><td>{_e(a)}</td><td>{_e(b)}</td><td class="num">{_e(c)}</td><td class="{cls}">{_e(d)}</td></tr>'
        )
    return "\n".join(out + ["</table>"])


def _max_rate(directory: Path, max_rate: dict | None) -> str:
    if max_rate is None:
        return ""
    curve = ""
    if (directory / "rate_curve.csv").is_file():
        frame = pd.read_csv(directory / "rate_curve.csv")
        rows = [
            [
                format_value(r.rate_per_s),
                format_value(r.output_tokens_per_s_per_gpu),
                format_value(r.ttft_p99_s, "s"),
                format_value(r.tpot_p99_s, "s"),
                format_value(r.goodput_fraction, "%"),
                "yes" if r.all_targets_met else "no",
            ]
            for r in frame.itertuples()
        ]
        curve = _table(["rate / s", "output tokens / s / GPU", "TTFT p99", "TPOT p99", "goodput", "targets met"], rows)
    return f"<h2>Max rate</h2>\n<p>{_e(max_rate_sentence(max_rate))}</p>\n{curve}"


def serving_index_html(directory: Path, summary: dict) -> str:
    f = summary["figures"]
    latency = [
        [LATENCY_TEXT[m], *(format_value(summary["latency"][m][s], "s") for s in STATISTICS)] for m in LATENCY_METRICS
    ]
    figures = [[text, format_value(f[key])] for text, key in THROUGHPUT_ROWS]
    figures += [
        ["goodput fraction", format_value(f["goodput_fraction"], "%")],
        ["preemptions", f"{f['preemptions']:.0f}"],
        [
            "KV cache peak / mean blocks",
            f"{f['kv_peak_blocks']:.0f} / {f['kv_mean_blocks']:.1f} of {f['kv_capacity_blocks']:.0f}"
            + (
                " with cached prefixes (evicted when a request needs their room)" if summary.get("prefix_cache") else ""
            ),
        ],
    ]
    pictures = [
        f'<figure><img src="{_e(name)}" alt="{_e(caption)}"><figcaption>{_e(caption)}</figcaption></figure>'
        for name, caption in PICTURES
        if (directory / name).is_file()
    ]
    files = [
        name
        for name in ("summary.md", "summary.json", "requests.csv", "rate_curve.csv", "serving_trace.json")
        if (directory / name).is_file()
    ]
    links = " ".join(f'<a href="{_e(n)}">{_e(n)}</a>' for n in files)
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>moesim serve: {_e(summary['scenario'])}</title><style>{_CSS}</style></head><body>",
            f"<h1>moesim serve: {_e(summary['scenario'])}</h1>",
            f'<p class="lead">{_e(headline(summary))}.</p>',
            *([f'<p class="lead">{_e(calibration_line(summary))}</p>'] if calibration_line(summary) else []),
            *([f"<p>{_e(engine_check_line(summary))}</p>"] if engine_check_line(summary) else []),
            *([f"<p>{_e(line)}.</p>"] if (line := launches_line(summary)) else []),
            *([f"<p>{_e(line)}.</p>"] if (line := host_line(summary)) else []),
            *([f"<p>{_e(line)}.</p>"] if (line := lockstep_line(summary)) else []),
            *([f"<p>{_e(line[0].upper() + line[1:])}.</p>"] if (line := prefix_cache_line(summary)) else []),
            *([f"<p>{_e(line[0].upper() + line[1:])}.</p>"] if (line := turns_line(summary)) else []),
            f"<p>Files: {links}. Open serving_trace.json in ui.perfetto.dev.</p>",
            "<h2>Targets</h2>",
            _targets(summary),
            _max_rate(directory, summary.get("max_rate")),
            "<h2>Latency</h2>",
            _table(["metric", *STATISTICS], latency),
            "<h2>Throughput and cache</h2>",
            _table(["figure", "value"], figures),
            "<h2>Pictures</h2>",
            *pictures,
            "</body></html>",
            "",
        ]
    )


def write_serving_index(directory: Path, summary: dict) -> Path:
    """index.html beside the files of a `moesim serve` directory (written before it: it links what exists)."""
    path = Path(directory) / INDEX_FILE
    write_atomic(path, serving_index_html(Path(directory), summary))
    return path
