"""pyiceberg's REST catalog client, an independent client of the test REST server
(scripts/iceberg_java rest): each command prints one JSON object on stdout for the Rust tests to
check.

usage: rest_catalog.py URI [--token T | --credential ID:SECRET] COMMAND [ARGS]
  create NAMESPACE TABLE           create the namespace (if missing) and a table (id long, name string)
  append NAMESPACE TABLE ID...     append one row per id; {"error": class, "message"} on failure
  read NAMESPACE TABLE             {"rows": [[id, name], ...] ordered by id, "snapshots": n}
  stale-commit NAMESPACE TABLE ID  append row ID, then commit a property update that requires
                                   the snapshot from before that append (one request, no retry):
                                   the server must refuse it
  list                             {"namespaces": [...], "tables": {namespace: [...]}}
"""

import argparse
import json
import sys

import pyarrow as pa
from pyiceberg.catalog.rest import RestCatalog
from pyiceberg.table.update import AssertRefSnapshotId, SetPropertiesUpdate

SCHEMA = pa.schema([pa.field("id", pa.int64(), nullable=False), pa.field("name", pa.string())])


def catalog(args) -> RestCatalog:
    properties = {"uri": args.uri}
    if args.token:
        properties["token"] = args.token
    if args.credential:
        properties["credential"] = args.credential
    return RestCatalog("lakewriter_test", **properties)


def rows(ids) -> pa.Table:
    return pa.Table.from_pylist([{"id": int(i), "name": f"row {i}"} for i in ids], schema=SCHEMA)


def failure(error: Exception) -> dict:
    return {"error": type(error).__name__, "message": str(error)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("uri")
    parser.add_argument("--token")
    parser.add_argument("--credential")
    parser.add_argument("command")
    parser.add_argument("args", nargs="*")
    args = parser.parse_args()
    cat = catalog(args)
    out: dict
    if args.command == "create":
        namespace, table = args.args
        if (namespace,) not in cat.list_namespaces():
            cat.create_namespace(namespace)
        created = cat.create_table(f"{namespace}.{table}", schema=SCHEMA)
        out = {"location": created.location(), "format_version": created.format_version}
    elif args.command == "append":
        namespace, table, *ids = args.args
        try:
            cat.load_table(f"{namespace}.{table}").append(rows(ids))
            out = {"ok": True}
        except Exception as error:  # the test checks which error the client saw
            out = failure(error)
    elif args.command == "read":
        namespace, table = args.args
        loaded = cat.load_table(f"{namespace}.{table}")
        found = loaded.scan().to_arrow().sort_by("id").to_pylist()
        out = {
            "rows": [[r["id"], r["name"]] for r in found],
            "snapshots": len(loaded.metadata.snapshots),
        }
    elif args.command == "stale-commit":
        namespace, table, new_id = args.args
        stale = cat.load_table(f"{namespace}.{table}")
        cat.load_table(f"{namespace}.{table}").append(rows([new_id]))
        # the catalog call itself, not a transaction: pyiceberg's transactions retry on conflict
        requirement = AssertRefSnapshotId(ref="main", snapshot_id=stale.metadata.current_snapshot_id)
        update = SetPropertiesUpdate(updates={"lakewriter.test": "stale"})
        try:
            cat.commit_table(stale, requirements=(requirement,), updates=(update,))
            out = {"ok": True}
        except Exception as error:
            out = failure(error)
        out["properties"] = cat.load_table(f"{namespace}.{table}").properties
    elif args.command == "list":
        namespaces = [".".join(ns) for ns in cat.list_namespaces()]
        out = {
            "namespaces": namespaces,
            "tables": {ns: [t[-1] for t in cat.list_tables(ns)] for ns in namespaces},
        }
    else:
        parser.error(f"unknown command {args.command}")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
