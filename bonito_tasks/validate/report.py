"""The quality report of a validate run: a JSON summary, three SVG plots and an HTML page holding them.

The plots are inline SVG written here (matplotlib is not a dependency): output-length histograms
per task type, the label distribution per classification task type, and the reasons generations
were dropped or rows quarantined.
"""

from __future__ import annotations

import html
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bonito_tasks.contracts import LengthStats, Manifest, QualitySummary

TOP_LABELS = 10
HIST_BINS = 12
_BAR_H, _GAP, _LABEL_W, _PLOT_W = 16, 4, 200, 360


def quality_report(
    profile: pa.Table, passed: np.ndarray, failed_by_row: dict[int, list[str]], generated: list[Manifest],
    label_tasks: list[str],
) -> tuple[QualitySummary, dict[str, bytes]]:
    """(summary, files): the summary goes into the validate manifest's metrics; files are
    quality.html, summary.json and the plots *.svg."""
    rows = len(passed)
    parse_failures: Counter = Counter()
    for manifest in generated:
        parse_failures.update(manifest.metrics.parse_failures)
    failed = Counter(name for names in failed_by_row.values() for name in names)
    task_type = profile["task_type"].to_numpy(zero_copy_only=False)
    output_tokens = profile["output_tokens"].to_numpy(zero_copy_only=False)
    lengths = {}
    histograms = {}
    for task in sorted(set(task_type)):
        values = output_tokens[task_type == task]
        lengths[task] = LengthStats(rows=len(values), median=float(np.median(values)),
                                    p95=float(np.percentile(values, 95)), max=int(values.max()))
        counts, edges = np.histogram(values, bins=HIST_BINS)
        histograms[task] = [(f"{edges[i]:.0f}-{edges[i + 1]:.0f}", int(c)) for i, c in enumerate(counts)]
    labels = {}
    for task in label_tasks:
        column = profile[f"label__{task}"].combine_chunks().filter(pa.array(passed))
        counts = pc.value_counts(column.drop_null()).to_pylist()
        ranked = sorted(((c["values"], c["counts"]) for c in counts), key=lambda item: (-item[1], item[0]))
        labels[task] = dict(ranked[:TOP_LABELS])
    summary = QualitySummary(
        rows=rows,
        passed=int(passed.sum()),
        quarantined=rows - int(passed.sum()),
        pass_rate=round(float(passed.mean()), 6) if rows else 0.0,
        duplicate_rate=round(float(profile["repeats_input_output"].to_numpy().mean()), 6) if rows else 0.0,
        failed_expectations=dict(failed.most_common()),
        parse_failures=dict(parse_failures.most_common()),
        dropped_generations=sum(m.rows_of("dropped_generations") for m in generated),
        output_tokens=lengths,
        labels=labels,
    )
    plots = {
        "output_tokens.svg": _panels("Output length (tokens) per task type", histograms),
        "labels.svg": _panels("Label distribution per task type (passing rows)",
                              {t: list(v.items()) for t, v in labels.items()}),
        "failures.svg": _panels("Why generations were dropped or rows quarantined", {
            "parse failures (generate)": list(summary.parse_failures.items()),
            "failed expectations (validate)": list(summary.failed_expectations.items()),
        }),
    }
    files = {name: svg.encode() for name, svg in plots.items()}
    files["summary.json"] = summary.model_dump_json(indent=2).encode()
    files["quality.html"] = _page(summary, plots).encode()
    return summary, files


def _panels(title: str, panels: dict[str, list[tuple[str, int]]]) -> str:
    """Horizontal bar charts stacked under one title, as one SVG document."""
    body, y = [f'<text x="4" y="18" font-weight="bold">{html.escape(title)}</text>'], 32
    for name, bars in panels.items():
        body.append(f'<text x="4" y="{y + 12}" font-style="italic">{html.escape(name)}</text>')
        y += 20
        if not bars:
            body.append(f'<text x="{_LABEL_W}" y="{y + 12}" fill="#777">none</text>')
            y += _BAR_H + _GAP
        top = max((v for _, v in bars), default=0) or 1
        for label, value in bars:
            width = _PLOT_W * value / top
            body.append(
                f'<text x="{_LABEL_W - 6}" y="{y + 12}" text-anchor="end">{html.escape(str(label))[:40]}</text>'
                f'<rect x="{_LABEL_W}" y="{y}" width="{width:.1f}" height="{_BAR_H}" fill="#4c78a8"/>'
                f'<text x="{_LABEL_W + width + 4:.1f}" y="{y + 12}">{value}</text>'
            )
            y += _BAR_H + _GAP
        y += 10
    width = _LABEL_W + _PLOT_W + 80
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{y}" font-family="sans-serif" '
            f'font-size="12">{"".join(body)}</svg>')


def _page(summary: QualitySummary, plots: dict[str, str]) -> str:
    rows = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(getattr(summary, k)))}</td></tr>"
        for k in ("rows", "passed", "quarantined", "pass_rate", "duplicate_rate", "dropped_generations")
    )
    figures = "".join(f"<figure>{svg}</figure>" for svg in plots.values())
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Bonito quality report</title></head>"
        f"<body style='font-family:sans-serif'><h1>Quality report</h1><table>{rows}</table>{figures}</body></html>"
    )
