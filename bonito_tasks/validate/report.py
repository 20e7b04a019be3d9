"""The quality report of a validate run: a JSON summary, three SVG plots and an HTML page holding them.

The plots are drawn with matplotlib (SVG, text kept as text): output-length histograms per task type
(integer token ranges, the rows that passed and the rows quarantined apart, in tokens of the run's
model tokenizer when the worker has it, else estimated as UTF-8 bytes / 4, as the plot says), the
label distribution per classification task type, and the reasons generations were dropped or rows
quarantined. The Dataset view and the dataset card show the same files.
"""

from __future__ import annotations

import html
import io
import math
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bonito_tasks.contracts import GenerateMetrics, LengthStats, Manifest, QualitySummary

TOP_LABELS = 10
HIST_BINS = 12


def quality_report(
    profile: pa.Table, passed: np.ndarray, failed_by_row: dict[int, list[str]], generated: list[Manifest],
    label_tasks: list[str], output_tokens: np.ndarray | None = None, tokenizer: str | None = None,
) -> tuple[QualitySummary, dict[str, bytes]]:
    """(summary, files): the summary goes into the validate manifest's metrics; files are
    quality.html, summary.json and the plots *.svg. `output_tokens`: each row's output length in
    tokens of the model `tokenizer` (bonito_tasks.tokens.count_tokens); None: the profile's
    estimate (UTF-8 bytes / 4)."""
    rows = len(passed)
    parse_failures: Counter = Counter()
    for manifest in generated:
        parse_failures.update(manifest.metrics_as(GenerateMetrics).parse_failures)
    failed = Counter(name for names in failed_by_row.values() for name in names)
    task_type = profile["task_type"].to_numpy(zero_copy_only=False)
    if output_tokens is None:
        output_tokens, unit = profile["output_tokens"].to_numpy(zero_copy_only=False), "tokens, estimated as bytes / 4"
    else:
        unit = f"tokens of {tokenizer}" if tokenizer else "tokens"
    lengths = {}
    for task in sorted(set(task_type)):
        values = output_tokens[task_type == task]
        lengths[task] = LengthStats(rows=len(values), median=float(np.median(values)),
                                    p95=float(np.percentile(values, 95)), max=int(values.max()))
    histograms = output_length_histograms(output_tokens, task_type, passed)
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
        "output_tokens.svg": _length_panels(f"Output length per task type ({unit})", histograms, unit),
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


def output_length_histograms(tokens: np.ndarray, task_type: np.ndarray, passed: np.ndarray,
                             bins: int = HIST_BINS) -> dict[str, list[tuple[str, int, int]]]:
    """Per task type, `(range, passed, quarantined)` rows: at most `bins` integer ranges of one
    width from the shortest output to the longest ("12-15", or "7" for a width of one), each with
    the rows that passed and the rows quarantined whose output length falls in it."""
    histograms = {}
    for task in sorted(set(task_type)):
        mask = task_type == task
        values, ok = tokens[mask].astype(np.int64), passed[mask]
        low, high = int(values.min()), int(values.max())
        width = max(1, math.ceil((high - low + 1) / bins))
        index = (values - low) // width
        n = int(index.max()) + 1
        kept, quarantined = np.bincount(index[ok], minlength=n), np.bincount(index[~ok], minlength=n)
        rows = []
        for i in range(n):
            first, last = low + i * width, min(high, low + (i + 1) * width - 1)
            rows.append((str(first) if first == last else f"{first}-{last}", int(kept[i]), int(quarantined[i])))
        histograms[task] = rows
    return histograms


def _length_panels(title: str, histograms: dict[str, list[tuple[str, int, int]]], unit: str) -> str:
    """One horizontal bar chart per task type: the output-length ranges down, rows across, the
    passed rows and the quarantined rows stacked in two colours (matplotlib, SVG, text as text)."""
    import matplotlib
    from matplotlib.figure import Figure

    heights = [max(1, len(rows)) * 0.28 + 0.9 for rows in histograms.values()] or [1.0]
    with matplotlib.rc_context({"svg.hashsalt": "bonito", "svg.fonttype": "none", "font.size": 9}):
        fig = Figure(figsize=(7.5, sum(heights) + 0.6), layout="constrained")
        fig.suptitle(title, fontweight="bold", fontsize=10)
        axes = fig.subplots(max(1, len(histograms)), 1, squeeze=False, height_ratios=heights)[:, 0]
        for ax, (task, rows) in zip(axes, histograms.items()):
            ax.set_title(task, loc="left", fontstyle="italic", fontsize=9)
            positions = range(len(rows))
            kept = [r[1] for r in rows]
            ax.barh(positions, kept, color="#4c78a8", label="passed")
            ax.barh(positions, [r[2] for r in rows], left=kept, color="#f58518", label="quarantined")
            ax.set_yticks(positions, [r[0] for r in rows])
            ax.invert_yaxis()  # shortest outputs on top
            ax.set_xlabel("rows")
            ax.set_ylabel(f"output length\n({unit})")
            ax.legend(loc="lower right", fontsize=8, frameon=False)
            ax.spines[["top", "right"]].set_visible(False)
        buffer = io.StringIO()
        fig.savefig(buffer, format="svg", metadata={"Date": None})
    svg = buffer.getvalue()
    return svg[svg.index("<svg"):]


def _panels(title: str, panels: dict[str, list[tuple[str, int]]]) -> str:
    """Horizontal bar charts, one per panel, stacked under one title, as one SVG document (matplotlib;
    text stays text, and the output is byte-for-byte the same for the same numbers)."""
    import matplotlib
    from matplotlib.figure import Figure

    heights = [max(1, len(bars)) * 0.28 + 0.6 for bars in panels.values()] or [1.0]
    with matplotlib.rc_context({"svg.hashsalt": "bonito", "svg.fonttype": "none", "font.size": 9}):
        fig = Figure(figsize=(7.5, sum(heights) + 0.6), layout="constrained")
        fig.suptitle(title, fontweight="bold", fontsize=10)
        axes = fig.subplots(max(1, len(panels)), 1, squeeze=False, height_ratios=heights)[:, 0]
        for ax, (name, bars) in zip(axes, panels.items()):
            ax.set_title(name, loc="left", fontstyle="italic", fontsize=9)
            if not bars:
                ax.text(0.5, 0.5, "none", ha="center", va="center", color="#777", transform=ax.transAxes)
                ax.set_axis_off()
                continue
            labels = [str(label)[:40] for label, _ in bars]
            values = [value for _, value in bars]
            positions = range(len(bars))
            ax.barh(positions, values, color="#4c78a8")
            ax.set_yticks(positions, labels)
            ax.invert_yaxis()  # first bar on top, in the given order
            ax.bar_label(ax.containers[0], padding=3, fontsize=8)
            ax.margins(x=0.12)
            ax.spines[["top", "right"]].set_visible(False)
        buffer = io.StringIO()
        fig.savefig(buffer, format="svg", metadata={"Date": None})
    svg = buffer.getvalue()
    return svg[svg.index("<svg"):]  # inline-able: no XML declaration or doctype


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
