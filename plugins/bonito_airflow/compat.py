"""The Airflow adapters' shims over private internals of Airflow, each in one place.

Written against apache-airflow 3.3.2 (task SDK 1.3.2). Each names why no public API does the job
there; tests/unit/test_compat.py pins each one, so an upgrade that moves an internal breaks one
known test. Check at an upgrade whether a public API has appeared, and drop the shim when one has.
(The library's shims are in bonito_tasks/compat.py.)
"""

from __future__ import annotations

import os
from typing import Any

# What the task supervisor puts in the task process's metadata-DB URL
# (airflow.sdk.execution_time.supervisor.block_orm_access).
BLOCKED_DB_URL_PREFIX = "airflow-db-not-allowed"


def redact(value: Any) -> Any:
    """`value` with the secrets Airflow knows of (connection passwords, masked variables, values
    given to `airflow.sdk.log.mask_secret`) replaced by "***"; dicts and lists are walked.

    Airflow 3.3.2: the task SDK makes `mask_secret` public but not `redact`; the masker's `redact`
    lives in the private `airflow.sdk._shared.secrets_masker` (Airflow itself imports it from there).
    """
    from airflow.sdk._shared.secrets_masker import redact as airflow_redact

    return airflow_redact(value)


def under_task_supervisor() -> bool:
    """Whether this process is a task process started by Airflow's task supervisor (any executor).

    Airflow 3.3.2 has no public way to ask. The supervisor blocks the metadata database in the task
    process by setting AIRFLOW__DATABASE__SQL_ALCHEMY_CONN to "airflow-db-not-allowed:///", which
    `dag.test()` and plain Python never do; that value is the sign.
    """
    return os.environ.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "").startswith(BLOCKED_DB_URL_PREFIX)
