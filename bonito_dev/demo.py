"""`make demo`: one bonito_dataset run with dag.test() on the bundled samples and the tiny model.

`make demo RESUME=1` (`python -m bonito_dev.demo --resume`) resumes the last demo run instead of
starting a new one: same run id, same conf. Every stage whose manifest that run committed is reused,
and generate resumes from its checkpoints, so a killed demo picks up where it stopped.

How: `dag.test()` names a run `manual__<run_after>` and replaces the run with the same logical date.
The demo picks one timestamp T per run, passes `logical_date=T, run_after=T`, and records T, the run
id and the conf in `demo-output/last_run.json` before the run starts; a resume passes the same T.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from bonito_dev.local import REPO, HomeBusy, allow_own_locations, configure, load_dag, lock_home, setup_db

DEMO_DIR = REPO / "demo-output"
LAST_RUN_FILE = "last_run.json"


def demo_conf(demo_dir: Path = DEMO_DIR) -> dict:
    return {
        "source": str(REPO / "tests/assets/sample_docs"),
        "store": str(demo_dir / "store"),
        "model_id": str(REPO / "tests/assets/tiny-bonito"),
        "task_types": ["exqa", "ynqa", "nli"],
        "dtype": "float32",
        # The tiny model only imitates Bonito's format; about 85% of its rows pass the
        # per-task checks, so the demo gates at 50% instead of the production 90%.
        "min_pass_rate": 0.5,
        "full_refresh": True,  # every demo run reprocesses the samples (the ledger would skip them)
    }


def manual_run_id(when: datetime) -> str:
    """The run id `dag.test(logical_date=when, run_after=when)` gives its run (Airflow's
    `DagRunType.MANUAL.generate_run_id(suffix=run_after.isoformat())`)."""
    return f"manual__{when.isoformat()}"


class NothingToResume(RuntimeError):
    pass


def choose_run(demo_dir: Path, resume: bool, now: datetime | None = None) -> tuple[datetime, str, dict]:
    """(logical date, run id, conf) of the demo run: a new run at `now` (whole seconds, UTC), or with
    `resume` the last one recorded in `demo_dir/last_run.json` (NothingToResume when there is none)."""
    record = demo_dir / LAST_RUN_FILE
    if resume:
        if not record.is_file():
            raise NothingToResume(f"no demo run to resume: {record} does not exist (run `make demo` first)")
        last = json.loads(record.read_text())
        return datetime.fromisoformat(last["logical_date"]), last["run_id"], last["conf"]
    when = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    return when, manual_run_id(when), demo_conf(demo_dir)


def record_run(demo_dir: Path, when: datetime, run_id: str, conf: dict) -> None:
    """Written before the run starts, so that a run killed half-way can be resumed."""
    demo_dir.mkdir(parents=True, exist_ok=True)
    record = {"run_id": run_id, "logical_date": when.isoformat(), "conf": conf}
    (demo_dir / LAST_RUN_FILE).write_text(json.dumps(record, indent=2) + "\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bonito_dev.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--resume", action="store_true",
                        help=f"resume the last demo run (same run id and conf, from demo-output/{LAST_RUN_FILE}) "
                             "instead of starting a new one")
    parser.add_argument("--output", type=Path, default=DEMO_DIR,
                        help="the demo's folder: Airflow home <output>/airflow, store <output>/store "
                             "(default: demo-output; `make ui` reads the same one)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.output = args.output.resolve()
    try:
        when, run_id, conf = choose_run(args.output, args.resume)
    except NothingToResume as err:
        print(err, file=sys.stderr)
        return 2
    try:  # not while `make ui` runs a scheduler on the same database
        lock = lock_home(args.output / "airflow", "make demo")  # noqa: F841 - held until the demo ends
    except HomeBusy as busy:
        print(busy, file=sys.stderr)
        return 2
    configure(args.output / "airflow")
    allow_own_locations(conf)  # the samples and the demo's store
    setup_db()
    from bonito_tasks.contracts import RunRef
    from bonito_tasks.stage import StageWriter
    from bonito_tasks.store import open_store

    record_run(args.output, when, run_id, conf)
    print(f"{'resuming' if args.resume else 'starting'} demo run {run_id}", file=sys.stderr)
    started = time.monotonic()
    dag = load_dag("bonito_dataset")
    dag_run = dag.test(logical_date=when, run_after=when, run_conf=conf)
    elapsed = time.monotonic() - started
    if dag_run.run_id != run_id:  # Airflow named it differently: a resume would not find it
        print(f"warning: the run is {dag_run.run_id}, not {run_id}; `--resume` cannot resume it", file=sys.stderr)
    if dag_run.state != "success":
        print(f"demo run {dag_run.run_id} ended {dag_run.state}; see the task logs above. "
              f"Resume it with `make demo RESUME=1`", file=sys.stderr)
        return 1
    published = StageWriter(open_store(conf["store"]), RunRef(dag_id=dag.dag_id, run_id=dag_run.run_id),
                            "publish").committed()
    metrics = published.metrics
    summary = {"examples": metrics.examples, "examples_per_task_type": metrics.examples_per_task_type,
               "dataset_uri": metrics.dataset_uri}
    print(json.dumps({"run_id": dag_run.run_id, "wall_s": round(elapsed, 1), **summary}, indent=2))
    print(f"\nPublished {metrics.examples} examples to {metrics.dataset_uri}")
    print(f"Load it with: datasets.load_dataset({metrics.dataset_uri!r})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
