"""`make run SOURCE=<folder, file or s3://…>`: one bonito_dataset run on your own documents, on this machine.

    python -m bonito_dev.run ~/my-documents                                    # the trigger form's defaults
    python -m bonito_dev.run s3://bucket/prefix                                # S3: credentials from aws_default
    python -m bonito_dev.run ~/my-documents --conf '{"task_types": ["exqa", "ynqa"]}'
    python -m bonito_dev.run ~/my-documents --tiny                             # no GPU: the bundled tiny model

Like `make demo`, it runs the DAG with `dag.test()` on a SQLite Airflow (here under
`local-output/airflow/`, or `--output-dir`), with the store `local-output/store/` unless `--conf`
names another. An `s3://` source is passed on as it is (connection `aws_default`, else boto3's
credential chain); a local one is made absolute. `--tiny` lowers the quality gates and says which. The
params are checked first (as the DAG's check_params task does), so a bad value fails in a second.
At the end it prints the run's folder and where the dataset is.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from bonito_dev.local import REPO, allow_own_locations, configure, load_dag, setup_db

OUTPUT_DIR = REPO / "local-output"
NO_SOURCE = ("no source: give the documents to process, e.g. `make run SOURCE=~/my-documents` "
             "(a folder, a file or s3://bucket/prefix)")
TINY = {
    "model_id": str(REPO / "tests/assets/tiny-bonito"),
    "dtype": "float32",
    # The tiny model only imitates Bonito's format (on one document a third of its rows may pass):
    # gate the plumbing, not the quality of its answers.
    "min_pass_rate": 0.0, "max_duplicate_rate": 1.0, "max_label_share": 1.0,
}


def build_conf(source: str, conf_json: str | None = None, tiny: bool = False,
               output_dir: Path = OUTPUT_DIR) -> dict:
    """The run's conf: the source (a local one made absolute, an s3:// one as it is), the local
    store, the tiny model's settings with `tiny`, then the JSON object `conf_json` (any params; it
    wins). ValueError for an empty source."""
    if not source.strip():
        raise ValueError(NO_SOURCE)
    if not source.startswith("s3://"):
        source = str(Path(source).expanduser().resolve())
    conf: dict = {"source": source, "store": str(output_dir / "store")}
    if tiny:
        conf |= TINY
    if conf_json:
        extra = json.loads(conf_json)
        if not isinstance(extra, dict):
            raise ValueError("--conf must be a JSON object of params")
        conf |= extra
    return conf


def lowered_gates(conf: dict) -> list[str]:
    """The quality gates `conf` sets below their production defaults, as `param: default -> value`."""
    from bonito_tasks.config import RunConfig

    lowered = []
    for name in ("min_pass_rate", "max_duplicate_rate", "max_label_share"):
        default = RunConfig.model_fields[name].default
        if name in conf and conf[name] != default:
            lowered.append(f"{name}: {default} -> {conf[name]}")
    return lowered


def rejection(conf: dict, airflow_home: Path) -> str | None:
    """Why the run's values (the form's defaults, then `conf`) make no valid RunConfig; None if they do."""
    from bonito_airflow.params import env_defaults, run_params
    from bonito_tasks.config import ConfigRejected, check_config

    defaults = {name: p.value for name, p in run_params(**env_defaults(os.environ, airflow_home)).items()}
    try:
        check_config(defaults | conf)
    except ConfigRejected as rejected:
        return str(rejected)
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bonito_dev.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="folder, file or s3://bucket/prefix of documents")
    parser.add_argument("--conf", help="a JSON object of params (docs/params.md), laid over the defaults")
    parser.add_argument("--tiny", action="store_true",
                        help="use the bundled tiny test model (CPU; it knows nothing) and lower the quality gates")
    parser.add_argument("--output-dir", type=Path, default=OUTPUT_DIR,
                        help="where the local Airflow home and store go (default: local-output/)")
    args = parser.parse_args(argv)
    try:
        conf = build_conf(args.source, args.conf, args.tiny, output_dir=args.output_dir)
    except ValueError as problem:
        print(problem, file=sys.stderr)
        return 2
    if args.tiny and (lowered := lowered_gates(conf)):
        print("TINY: the tiny model only imitates Bonito's format, so these quality gates are lowered "
              f"(production defaults first): {'; '.join(lowered)}. Set them in CONF to keep them.", file=sys.stderr)

    configure(args.output_dir / "airflow")  # before Airflow is imported
    allow_own_locations(conf)  # your machine: the run's source, store and export are yours to choose
    if problem := rejection(conf, args.output_dir / "airflow"):
        print(problem, file=sys.stderr)
        return 2
    from bonito_tasks.contracts import RunRef
    from bonito_tasks.stage import StageWriter
    from bonito_tasks.store import open_store, run_prefix

    setup_db()
    dag_run = load_dag("bonito_dataset").test(run_conf=conf)
    store = open_store(conf["store"])
    run = RunRef(dag_id="bonito_dataset", run_id=dag_run.run_id)
    print(f"\nrun {dag_run.run_id}: {dag_run.state}")
    print(f"run folder (the run id sanitised): {store.uri(run_prefix(run))}")
    if dag_run.state != "success":
        print("see the task logs above, and summary.json in the run folder", file=sys.stderr)
        return 1
    published = StageWriter(store, run, "publish").committed()
    if published is None:  # nothing new: every document was already in the ledger
        print("nothing was published: every document is already in the ledger (add --conf '{\"full_refresh\": true}')")
        return 0
    metrics = published.metrics
    print(f"dataset ({metrics.examples} examples): {metrics.dataset_uri}")
    print(f"load it with: datasets.load_dataset({metrics.dataset_uri!r})")
    if metrics.hub_url:
        print(f"on the Hub: {metrics.hub_url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
