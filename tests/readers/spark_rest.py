"""Spark 3.5 with Iceberg's Spark runtime (the Java reference implementation) reading through an
Iceberg REST catalog, an independent reader for the Rust tests: runs one Spark SQL query over the
catalog `lake` and prints each row as a line, its values joined by `|` (NULL for a null).
Several queries run in one session (Spark's start-up is most of the time), their rows separated
by an empty line.

usage: spark_rest.py URI [--token T | --credential ID:SECRET] [--warehouse W] [--catalog NAME]
                     QUERY [QUERY ...]

A URI `jdbc:sqlite:FILE` opens the SQLite catalog file lakewriter writes with Iceberg's own
JdbcCatalog instead (`--warehouse` required; `--catalog` must then be the catalog name the file
records, `lakewriter` by default). Iceberg's SQL extensions are loaded, so the queries may also
change the tables (`DELETE`, `UPDATE`, `CALL lakewriter.system.…`): Spark as another engine
committing to lakewriter's tables.

The jars Spark needs besides pyspark's (the runtime jar and the Jackson and HttpClient it refers
to under `org.apache.iceberg.shaded`) come from `scripts/iceberg_java spark-jars`, which must have
been installed (`scripts/iceberg_java install`). How long the session took to start and the
query to run goes to stderr.
"""

import argparse
import os
import shutil
import subprocess
import sys
import time

PROJECT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Start-up is most of a reader's time: C1 only and the serial collector, as for the REST server;
# one local core, a small heap, no UI, no Hive, one shuffle partition.
JVM_OPTIONS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Xss1m -Djava.awt.headless=true"


def java_home() -> str:
    """JAVA_HOME if set, else the JDK the `java` on PATH belongs to (what scripts/iceberg_java
    runs)."""
    if os.environ.get("JAVA_HOME"):
        return os.environ["JAVA_HOME"]
    java = shutil.which("java")
    if java is None:
        sys.exit("spark_rest: no java on PATH: scripts/iceberg_java install")
    # .../bin/java, through Debian's alternatives links
    return os.path.dirname(os.path.dirname(os.path.realpath(java)))


def spark_jars() -> str:
    script = os.path.join(PROJECT, "scripts", "iceberg_java")
    return subprocess.run([script, "spark-jars"], check=True, capture_output=True,
                          text=True).stdout.strip()


def session(args):
    os.environ["JAVA_HOME"] = java_home()
    # pyspark runs its driver with this Python; the venv's, not whatever is first on PATH
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    # everything is on 127.0.0.1 (Spark would otherwise look for another interface, and warn)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from pyspark.sql import SparkSession

    jars = spark_jars()
    builder = (
        SparkSession.builder.master("local[1]")
        .appName("lakewriter-spark-rest")
        .config("spark.driver.memory", "512m")
        .config("spark.driver.extraJavaOptions", JVM_OPTIONS)
        # on the driver's own class path: in local mode the executor is the driver, and nothing
        # is copied through Spark's file server as it would be for spark.jars
        .config("spark.driver.extraClassPath", jars)
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.catalogImplementation", "in-memory")
        .config("spark.sql.shuffle.partitions", "1")
        .config("spark.default.parallelism", "1")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.extensions",
                "org.apache.iceberg.spark.extensions.IcebergSparkSessionExtensions")
    )
    catalog = f"spark.sql.catalog.{args.catalog}"
    builder = (
        builder.config(catalog, "org.apache.iceberg.spark.SparkCatalog")
        .config(f"{catalog}.uri", args.uri)
        # each query sees the catalog's current state, not a table loaded earlier
        .config(f"{catalog}.cache-enabled", "false")
    )
    if args.uri.startswith("jdbc:"):
        builder = (
            builder.config(f"{catalog}.catalog-impl", "org.apache.iceberg.jdbc.JdbcCatalog")
            # the table layout pyiceberg and lakewriter share (no iceberg_type column)
            .config(f"{catalog}.jdbc.schema-version", "V0")
        )
    else:
        builder = builder.config(f"{catalog}.type", "rest")
    if args.warehouse:
        builder = builder.config(f"{catalog}.warehouse", args.warehouse)
    if args.token:
        builder = builder.config(f"{catalog}.token", args.token)
    if args.credential:
        builder = builder.config(f"{catalog}.credential", args.credential)
        # the spec's token endpoint on the catalog itself (the client's default, made explicit:
        # Iceberg warns when it is left implicit)
        builder = builder.config(f"{catalog}.oauth2-server-uri",
                                 args.uri.rstrip("/") + "/v1/oauth/tokens")
        builder = builder.config(f"{catalog}.scope", "catalog")
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def line(values) -> str:
    return "|".join("NULL" if v is None else str(v) for v in values)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("uri")
    parser.add_argument("--token")
    parser.add_argument("--credential")
    parser.add_argument("--warehouse")
    parser.add_argument("--catalog")
    parser.add_argument("queries", nargs="+")
    args = parser.parse_args()
    if args.catalog is None:
        args.catalog = "lakewriter" if args.uri.startswith("jdbc:") else "lake"
    started = time.monotonic()
    spark = session(args)
    ready = time.monotonic()
    try:
        results = [spark.sql(query).collect() for query in args.queries]
    finally:
        done = time.monotonic()
        spark.stop()
    print("\n\n".join("\n".join(line(row) for row in rows) for rows in results))
    print(f"spark_rest: session {ready - started:.1f} s, queries {done - ready:.1f} s, "
          f"{sum(len(rows) for rows in results)} rows", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
