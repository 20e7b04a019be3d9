"""Thin Airflow adapters over the bonito_tasks library: one operator per task (one idiom:
`operators.BonitoStageOperator`), hooks for connections, the trigger-form params, the task runtime."""
