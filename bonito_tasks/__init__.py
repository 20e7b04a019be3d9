"""bonito-etl: turn unlabeled documents into instruction-tuning data with Bonito.

A plain library: no Airflow imports, heavy dependencies imported where they are used.
"""

__version__ = "0.1.0"
