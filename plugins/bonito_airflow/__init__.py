"""Thin Airflow adapters over the bonito_tasks library: hooks for connections, params, task context."""
