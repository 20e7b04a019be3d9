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
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bonito_tasks.contracts import GenerateMetrics, LengthStats, Manifest, QualitySummary, ValidateAggregate
from bonito_tasks.validate.mix import add_mix, distinct_share, text_mix, top

TOP_LABELS = 10
TOP_SOURCES = 10
HIST_BINS = 12


def quality_report(
    profile: pa.Table, passed: np.ndarray, failed_by_row: dict[int, list[str]], generated: list[Manifest],
    label_tasks: list[str], output_tokens: np.ndarray | None = None, tokenizer: str | None = None,
    examples: pa.Table | None = None,
) -> tuple[QualitySummary, dict[str, bytes]]:
    """(summary, files) of a whole examples table in memory: its numbers (`run_numbers`), then
    `run_report`. `output_tokens`: each row's output length in tokens of the model `tokenizer`
    (bonito_tasks.tokens.count_tokens); None: the profile's estimate (UTF-8 bytes / 4). `examples`:
    the rows themselves, for their mix (validate/mix.py)."""
    parse_failures: Counter = Counter()
    for manifest in generated:
        parse_failures.update(manifest.metrics_as(GenerateMetrics).parse_failures)
    if output_tokens is None:
        output_tokens, unit = profile["output_tokens"].to_numpy(zero_copy_only=False), ESTIMATED_UNIT
    else:
        unit = f"tokens of {tokenizer}" if tokenizer else "tokens"
    numbers = run_numbers(profile, passed, failed_by_row, output_tokens, label_tasks, examples)
    numbers.parse_failures = dict(parse_failures)
    numbers.dropped_generations = sum(m.rows_of("dropped_generations") for m in generated)
    return run_report(numbers, label_tasks, unit)


ESTIMATED_UNIT = "tokens, estimated as bytes / 4"


def run_numbers(profile: pa.Table, passed: np.ndarray, failed_by_row: dict[int, list[str]],
                output_tokens: np.ndarray, label_tasks: list[str], examples: pa.Table | None = None
                ) -> ValidateAggregate:
    """What the report and the dataset suite need of some rows, in numbers that add up across
    partitions: rows, passed rows, repeats, quarantine reasons, output lengths and labels; with
    the rows themselves (`examples`), their mix too (validate/mix.py)."""
    task_type = profile["task_type"].to_numpy(zero_copy_only=False)
    labels = {}
    for task in label_tasks:
        column = profile[f"label__{task}"].combine_chunks().filter(pa.array(passed))
        labels[task] = {c["values"]: c["counts"] for c in pc.value_counts(column.drop_null()).to_pylist()}
    numbers = text_mix(examples, profile) if examples is not None else ValidateAggregate()
    return numbers.model_copy(update=dict(
        rows=len(passed), passed=int(passed.sum()),
        repeats=int(profile["repeats_input_output"].to_numpy(zero_copy_only=False).sum()),
        failed_expectations=dict(Counter(name for names in failed_by_row.values() for name in names)),
        lengths=length_counts(np.asarray(output_tokens), task_type, passed), labels=labels,
    ))


LengthCounts = dict[str, dict[int, tuple[int, int]]]  # task type -> output length -> (passed, quarantined) rows


def length_counts(tokens: np.ndarray, task_type: np.ndarray, passed: np.ndarray) -> LengthCounts:
    """task type -> output length -> (passed rows, quarantined rows)."""
    counts: LengthCounts = {}
    for task in sorted(set(task_type)):
        mask = task_type == task
        values, ok = tokens[mask].astype(np.int64), passed[mask]
        kept = dict(zip(*np.unique(values[ok], return_counts=True)))
        quarantined = dict(zip(*np.unique(values[~ok], return_counts=True)))
        counts[task] = {int(v): (int(kept.get(v, 0)), int(quarantined.get(v, 0)))
                        for v in sorted({*kept, *quarantined})}
    return counts


def add_numbers(total: ValidateAggregate, part: ValidateAggregate) -> None:
    """Add `part`'s numbers to `total` (in place)."""
    total.rows += part.rows
    total.passed += part.passed
    total.repeats += part.repeats
    total.dropped_generations += part.dropped_generations
    for mine, theirs in ((total.failed_expectations, part.failed_expectations),
                         (total.parse_failures, part.parse_failures)):
        for name, n in theirs.items():
            mine[name] = mine.get(name, 0) + n
    for task, counts in part.lengths.items():
        mine_lengths = total.lengths.setdefault(task, {})
        for value, (kept, quarantined) in counts.items():
            old = mine_lengths.get(value, (0, 0))
            mine_lengths[value] = (old[0] + kept, old[1] + quarantined)
    for task, labels in part.labels.items():
        mine_labels = total.labels.setdefault(task, {})
        for label, n in labels.items():
            mine_labels[label] = mine_labels.get(label, 0) + n
    add_mix(total, part)


def run_report(numbers: ValidateAggregate, label_tasks: list[str], unit: str = ESTIMATED_UNIT
               ) -> tuple[QualitySummary, dict[str, bytes]]:
    """(summary, files) from a run's numbers: the summary goes into the validate manifest's
    metrics; files are quality.html, summary.json and the plots *.svg. `unit`: what the output
    lengths count."""
    rows = numbers.rows
    lengths = {task: length_stats(counts) for task, counts in sorted(numbers.lengths.items())}
    labels = {}
    for task in label_tasks:
        ranked = sorted(numbers.labels.get(task, {}).items(), key=lambda item: (-item[1], item[0]))
        labels[task] = dict(ranked[:TOP_LABELS])
    summary = QualitySummary(
        rows=rows,
        passed=numbers.passed,
        quarantined=rows - numbers.passed,
        pass_rate=round(numbers.passed / rows, 6) if rows else 0.0,
        duplicate_rate=round(numbers.repeats / rows, 6) if rows else 0.0,
        failed_expectations=dict(Counter(numbers.failed_expectations).most_common()),
        parse_failures=dict(Counter(numbers.parse_failures).most_common()),
        dropped_generations=numbers.dropped_generations,
        output_tokens=lengths,
        labels=labels,
        output_length_counts=numbers.lengths,
        input_length_counts=numbers.input_lengths,
        verbatim=numbers.verbatim,
        scripts=dict(Counter(numbers.scripts).most_common()),
        distinct_bigrams={task: share for task, sketch in sorted(numbers.bigrams.items())
                          if (share := distinct_share(sketch)) is not None},
        top_sources=top(numbers.sources, TOP_SOURCES),
    )
    histograms = {task: _histogram(counts, HIST_BINS) for task, counts in sorted(numbers.lengths.items())}
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


def length_stats(counts: dict[int, tuple[int, int]]) -> LengthStats:
    """Rows, median, 95th percentile (numpy's linear method) and max of lengths given as counts."""
    values = np.array(sorted(counts), dtype=np.int64)
    ends = np.cumsum([sum(counts[int(v)]) for v in values])
    n = int(ends[-1])

    def at(i: int) -> float:
        return float(values[np.searchsorted(ends, i, side="right")])

    def percentile(q: float) -> float:
        h = (n - 1) * (q / 100)
        below = int(np.floor(h))
        a, b, t = at(below), at(min(below + 1, n - 1)), h - below
        return b - (b - a) * (1 - t) if t >= 0.5 else a + (b - a) * t  # numpy's _lerp

    return LengthStats(rows=n, median=percentile(50), p95=percentile(95), max=int(values[-1]))


def output_length_histograms(tokens: np.ndarray, task_type: np.ndarray, passed: np.ndarray,
                             bins: int = HIST_BINS) -> dict[str, list[tuple[str, int, int]]]:
    """Per task type, `(range, passed, quarantined)` rows: at most `bins` integer ranges of one
    width from the shortest output to the longest ("12-15", or "7" for a width of one), each with
    the rows that passed and the rows quarantined whose output length falls in it."""
    return {task: _histogram(counts, bins) for task, counts in length_counts(tokens, task_type, passed).items()}


def _histogram(counts: dict[int, tuple[int, int]], bins: int) -> list[tuple[str, int, int]]:
    values = np.array(sorted(counts), dtype=np.int64)
    low, high = int(values.min()), int(values.max())
    width = max(1, math.ceil((high - low + 1) / bins))
    index = (values - low) // width
    n = int(index.max()) + 1
    kept = np.bincount(index, weights=[counts[int(v)][0] for v in values], minlength=n)
    quarantined = np.bincount(index, weights=[counts[int(v)][1] for v in values], minlength=n)
    rows = []
    for i in range(n):
        first, last = low + i * width, min(high, low + (i + 1) * width - 1)
        rows.append((str(first) if first == last else f"{first}-{last}", int(kept[i]), int(quarantined[i])))
    return rows


def _length_panels(title: str, histograms: dict[str, list[tuple[str, int, int]]], unit: str) -> str:
    """One horizontal bar chart per task type: the output-length ranges down, rows across, the
    passed rows and the quarantined rows stacked in two colours."""
    def draw(ax: Any, rows: list[tuple[str, int, int]]) -> None:
        positions = range(len(rows))
        kept = [r[1] for r in rows]
        ax.barh(positions, kept, color="#4c78a8", label="passed")
        ax.barh(positions, [r[2] for r in rows], left=kept, color="#f58518", label="quarantined")
        ax.set_yticks(positions, [r[0] for r in rows])
        ax.invert_yaxis()  # shortest outputs on top
        ax.set_xlabel("rows")
        ax.set_ylabel(f"output length\n({unit})")
        ax.legend(loc="lower right", fontsize=8, frameon=False)

    return _stacked_svg(title, histograms, 0.9, draw)


def _panels(title: str, panels: dict[str, list[tuple[str, int]]]) -> str:
    """Horizontal bar charts, one per panel, stacked under one title."""
    def draw(ax: Any, bars: list[tuple[str, int]]) -> None:
        if not bars:
            ax.text(0.5, 0.5, "none", ha="center", va="center", color="#777", transform=ax.transAxes)
            ax.set_axis_off()
            return
        positions = range(len(bars))
        ax.barh(positions, [value for _, value in bars], color="#4c78a8")
        ax.set_yticks(positions, [str(label)[:40] for label, _ in bars])
        ax.invert_yaxis()  # first bar on top, in the given order
        ax.bar_label(ax.containers[0], padding=3, fontsize=8)
        ax.margins(x=0.12)

    return _stacked_svg(title, panels, 0.6, draw)


def _stacked_svg(title: str, panels: Mapping[str, Sequence[Any]], padding: float,
                 draw: Callable[[Any, Any], None]) -> str:
    """One SVG document (matplotlib; text stays text, the same numbers give the same bytes): a
    panel per entry under one title, each as tall as its bars, drawn by `draw(axes, bars)`."""
    import matplotlib
    from matplotlib.figure import Figure

    heights = [max(1, len(bars)) * 0.28 + padding for bars in panels.values()] or [1.0]
    with matplotlib.rc_context({"svg.hashsalt": "bonito", "svg.fonttype": "none", "font.size": 9}):
        fig = Figure(figsize=(7.5, sum(heights) + 0.6), layout="constrained")
        fig.suptitle(title, fontweight="bold", fontsize=10)
        axes = fig.subplots(max(1, len(panels)), 1, squeeze=False, height_ratios=heights)[:, 0]
        for ax, (name, bars) in zip(axes, panels.items()):
            ax.set_title(name, loc="left", fontstyle="italic", fontsize=9)
            draw(ax, bars)
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
