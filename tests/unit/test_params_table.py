"""The params reference in docs/params.md is generated from the code (bonito_dev/params_table.py):
it must list exactly the trigger form's Params (run_params(), built from RunConfig), as they are."""

import re

import pytest

from bonito_dev.params_table import DOC, END, START, render_table, replace_table, table_in

pytestmark = pytest.mark.airflow


def test_the_docs_table_is_the_generated_one():
    assert table_in(DOC.read_text(encoding="utf-8")) == render_table(), (
        "docs/params.md is stale: run `python -m bonito_dev.params_table` (or `make params-table`)")


def test_the_table_has_one_row_per_param_with_its_default_and_bounds():
    from bonito_airflow.params import ENV_DEFAULTS, env_defaults, run_params

    params = run_params(**env_defaults({}, "$AIRFLOW_HOME"))
    rows = {m.group(1): line for line in render_table().splitlines() if (m := re.match(r"\| `(\w+)` \|", line))}
    assert list(rows) == list(params)  # every param, in the form's order, nothing else
    for name, env in ENV_DEFAULTS.items():
        assert f"`${env}`" in rows[name]
    assert "| `chunk_max_tokens` | integer or null | `null` | > 16 |" in rows["chunk_max_tokens"]
    assert "| `n` | integer | `1` | ≥ 1; ≤ 16 |" in rows["n"]
    assert '`"vllm"`, `"server"`' in rows["backend"]
    assert "| `store` | string | `\"$AIRFLOW_HOME/bonito-store\"` | not empty; not blank |" in rows["store"]


def test_the_generator_rewrites_only_between_the_markers():
    text = f"intro\n{START}\nold table\n{END}\noutro\n"
    assert replace_table(text, "| new |") == f"intro\n{START}\n| new |\n{END}\noutro\n"
    with pytest.raises(ValueError, match="markers"):
        replace_table("no markers", "| new |")
