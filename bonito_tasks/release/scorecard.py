"""A run's scorecard, from the aggregates its stages committed (never from the rows again), and the
side-by-side plots of tonight against the baseline's scorecard."""

from __future__ import annotations

import io

from bonito_tasks.contracts import (
    ChunkMetrics,
    LengthStats,
    Manifest,
    RunRef,
    Scorecard,
    TaskScore,
    ValidateMetrics,
)


def build_scorecard(run: RunRef, validated: Manifest, chunked: Manifest | None, tag: str = "") -> Scorecard:
    """The scorecard of a run: validate's quality summary (pass rates, quarantine reasons, output
    lengths and labels per task type, and the mix of the validated rows: input lengths, verbatim
    answers, bigram diversity, writing systems, top sources) and chunk's counts."""
    quality = validated.metrics_as(ValidateMetrics).quality
    tasks: dict[str, TaskScore] = {}
    for task, counts in sorted(quality.output_length_counts.items()):
        passed = sum(kept for kept, _ in counts.values())
        rows = sum(kept + quarantined for kept, quarantined in counts.values())
        kept_lengths = {length: kept for length, (kept, _) in sorted(counts.items()) if kept}
        stats: LengthStats | None = quality.output_tokens.get(task)
        if kept_lengths:
            stats = length_stats(kept_lengths)
        found, checked = quality.verbatim.get(task, (0, 0))
        tasks[task] = TaskScore(rows=rows, passed=passed, pass_rate=round(passed / rows, 6) if rows else 0.0,
                                share=round(passed / quality.passed, 6) if quality.passed else 0.0,
                                output_tokens=stats, labels=dict(quality.labels.get(task, {})),
                                output_lengths=kept_lengths,
                                input_lengths=dict(sorted(quality.input_length_counts.get(task, {}).items())),
                                verbatim_share=round(found / checked, 6) if checked else None,
                                distinct_bigrams=quality.distinct_bigrams.get(task))
    chunk = chunked.metrics if chunked and isinstance(chunked.metrics, ChunkMetrics) else None
    return Scorecard(
        dag_id=run.dag_id, run_id=run.run_id, release_tag=tag, rows=quality.rows, passed=quality.passed,
        pass_rate=quality.pass_rate, duplicate_rate=quality.duplicate_rate,
        quarantine_reasons=dict(quality.failed_expectations), parse_failures=dict(quality.parse_failures),
        task_types=tasks, documents=chunk.documents if chunk else None, chunks=chunk.chunks if chunk else None,
        chunk_filters=dict(chunk.filtered) if chunk else {}, duplicate_chunks=chunk.duplicate_chunks if chunk else None,
        scripts=dict(quality.scripts), top_sources=dict(list(quality.top_sources.items())[:10]),
    )


def length_stats(counts: dict[int, int]) -> LengthStats:
    """Rows, median, 95th percentile (numpy's linear method) and max of lengths given as counts."""
    import numpy as np

    values = np.repeat(np.array(sorted(counts), dtype=np.int64), [counts[v] for v in sorted(counts)])
    return LengthStats(rows=int(values.size), median=float(np.percentile(values, 50)),
                       p95=float(np.percentile(values, 95)), max=int(values.max()))


def comparison_plot(tonight: Scorecard, baseline: Scorecard | None) -> bytes:
    """One SVG, a row per task type: its output-length distribution and its labels (or pass rate),
    tonight's bars beside the baseline's (shares of passing rows, so nights of different sizes compare)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted(set(tonight.task_types) | set(baseline.task_types if baseline else ()))
    fig, axes = plt.subplots(max(1, len(tasks)), 2, figsize=(11, 2.6 * max(1, len(tasks))), squeeze=False)
    names = ("tonight", f"baseline ({baseline.run_id})" if baseline else "baseline (none)")
    for row, task in enumerate(tasks):
        mine = tonight.task_types.get(task, TaskScore())
        base = baseline.task_types.get(task, TaskScore()) if baseline else TaskScore()
        ax = axes[row][0]
        for score, label, style in ((base, names[1], dict(alpha=0.5, color="tab:gray")),
                                    (mine, names[0], dict(alpha=0.6, color="tab:blue"))):
            total = sum(score.output_lengths.values())
            if total:
                lengths = sorted(score.output_lengths)
                ax.hist(lengths, bins=min(30, len(lengths)), weights=[score.output_lengths[v] / total for v in lengths],
                        label=label, **style)
        ax.set_title(f"{task}: output length ({tonight.length_unit}), share of passing rows", fontsize=9)
        ax.legend(fontsize=7)
        ax = axes[row][1]
        if mine.labels or base.labels:
            labels = sorted(set(mine.labels) | set(base.labels))[:12]
            total_m, total_b = sum(mine.labels.values()) or 1, sum(base.labels.values()) or 1
            x = range(len(labels))
            ax.bar([i - 0.2 for i in x], [base.labels.get(v, 0) / total_b for v in labels], 0.4, label=names[1],
                   color="tab:gray")
            ax.bar([i + 0.2 for i in x], [mine.labels.get(v, 0) / total_m for v in labels], 0.4, label=names[0],
                   color="tab:blue")
            ax.set_xticks(list(x), [str(v)[:16] for v in labels], fontsize=7)
            ax.set_title(f"{task}: labels, share of passing rows", fontsize=9)
        else:
            ax.bar([0, 1], [base.pass_rate, mine.pass_rate], color=["tab:gray", "tab:blue"])
            ax.set_xticks([0, 1], list(names), fontsize=7)
            ax.set_ylim(0, 1)
            ax.set_title(f"{task}: pass rate", fontsize=9)
        ax.legend(fontsize=7) if (mine.labels or base.labels) else None
    fig.suptitle("Tonight vs the last release", fontsize=11)
    fig.tight_layout()
    out = io.StringIO()
    plt.rcParams["svg.fonttype"] = "none"
    fig.savefig(out, format="svg")
    plt.close(fig)
    return out.getvalue().encode()
