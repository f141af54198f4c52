"""DuckDB with the extensions lakewriter's tests read the lake with, loaded from their PyPI
packages (duckdb-extension-*) so nothing is downloaded at run time. avro loads before iceberg,
which needs it to read manifests."""

import glob
import importlib
import os

import duckdb

EXTENSIONS = ["avro", "iceberg", "httpfs", "delta"]


def extension_path(name: str) -> str:
    package = importlib.import_module(f"duckdb_extension_{name}")
    base = os.path.dirname(package.__file__)
    found = glob.glob(os.path.join(base, "extensions", "v*", f"{name}.duckdb_extension"))
    if not found:
        raise RuntimeError(f"the duckdb-extension-{name} package holds no {name}.duckdb_extension")
    return found[0]


def connect() -> "duckdb.DuckDBPyConnection":
    con = duckdb.connect()
    con.execute("SET autoinstall_known_extensions = false")
    con.execute("SET autoload_known_extensions = false")
    # a query slower than two seconds (a loaded machine) would print a progress bar into the
    # rows the tests compare
    con.execute("SET enable_progress_bar = false")
    for name in EXTENSIONS:
        con.execute(f"LOAD '{extension_path(name)}'")
    return con


if __name__ == "__main__":
    con = connect()
    loaded = con.execute(
        "SELECT extension_name FROM duckdb_extensions() WHERE loaded ORDER BY 1"
    ).fetchall()
    print(" ".join(name for (name,) in loaded))
