"""Failures a retry cannot fix.

A stage raises a `PermanentFailure` when the same inputs and settings would fail the same way
(bad config, missing source, rejected credentials, a failed data contract). The Airflow adapters
turn it into a failure without retries; any other exception is retried.
"""

from __future__ import annotations


class PermanentFailure(Exception):
    """Retrying cannot help: fix the input, the settings or the credentials, then clear the task."""
