"""The dataset card's "Changes since the last release" section."""

from __future__ import annotations

from collections.abc import Mapping

from bonito_tasks.contracts import CompareMetrics


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def changes_section(compare: CompareMetrics | None, rows_added: Mapping[str, int], repo_id: str | None,
                    tag: str | None) -> str:
    """Rows this release added per task type, pass rates against the last release's, the drift
    checks' results, and how to load this release by its tag."""
    if compare is None:
        return ""
    card, base = compare.scorecard, compare.baseline
    lines = ["", "## Changes since the last release", ""]
    if base is None:
        lines.append(f"This is the first release compared by this pipeline ({compare.baseline_note}).")
    else:
        lines.append(f"Compared with the release of run `{base.run_id}`"
                     + (f" (tag `{base.release_tag}`)" if base.release_tag else "")
                     + f": drift verdict **{compare.verdict}** ({compare.failures} failure(s), "
                       f"{compare.warnings} warning(s)).")
    lines += ["", "| Task type | Rows added | Pass rate, last release | Pass rate, this release | Change |",
              "|---|---:|---:|---:|---:|"]
    for task in sorted(set(card.task_types) | set(rows_added)):
        now = card.task_types[task].pass_rate if task in card.task_types else None
        before = base.task_types[task].pass_rate if base and task in base.task_types else None
        change = f"{(now - before) * 100:+.1f} pt" if now is not None and before is not None else "n/a"
        lines.append(f"| `{task}` | {rows_added.get(task, 0)} | {_rate(before)} | {_rate(now)} | {change} |")
    if compare.checks:
        lines += ["", "| Drift check | Expectation | Last release | This release | Measured | Threshold (warn / fail) "
                      "| Result |", "|---|---|---|---|---:|---|---|"]
        for c in compare.checks:
            measured = "n/a" if c.value is None else f"{c.value:.4g}"
            lines.append(f"| {c.name} | `{c.expectation}` | {_cell(c.baseline)} | {_cell(c.tonight)} | {measured} "
                         f"| {c.warning} / {c.failure} | {c.severity} |")
    if repo_id and tag:
        lines += ["", f"This release is tagged `{tag}` on the Hub. Load exactly this release, whatever was "
                      "published after it:", "", "```python", "from datasets import load_dataset",
                  "", f'ds = load_dataset("{repo_id}", revision="{tag}")', "```"]
    return "\n".join(lines) + "\n"


def _cell(value: object) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}: {v:.3g}" if isinstance(v, float) else f"{k}: {v}"
                         for k, v in list(value.items())[:6]).replace("|", "\\|")
    return "n/a" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)
