"""Developer tools (a local Airflow for the demo and the tests); never deployed.

They live outside `plugins/` because every Airflow component imports what is there."""
