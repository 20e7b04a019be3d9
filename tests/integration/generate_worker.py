"""Runs one generate shard in its own process, so a test can SIGKILL it mid-shard.

Usage: python generate_worker.py STORE CONFIG_JSON CHUNKS_MANIFEST_URI SHARD
"""

import json
import logging
import sys

from bonito_tasks.config import RunConfig
from bonito_tasks.contracts import RunRef
from bonito_tasks.generate.run import generate_shard
from bonito_tasks.store import open_store

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    store_root, config_json, chunks_uri, shard = sys.argv[1:5]
    store = open_store(store_root)
    config = RunConfig(**json.loads(config_json))
    generate_shard(store, RunRef(dag_id="d", run_id="r1"), config, store.read_manifest(chunks_uri), int(shard))
