#!/usr/bin/env bash
# A local PostgreSQL server for development (`make postgres`), from Debian's package:
# a cluster in $PGDATA (default .cache/postgres) on 127.0.0.1:$PGPORT (default 5433), with a
# database `modelmap` (Dagster's storage) and `mlflow` (the tracking store), user `modelmap`,
# trust authentication on loopback only. Idempotent: an existing cluster is started again.
# `scripts/postgres.sh stop` stops it.
set -euo pipefail
PGPORT=${PGPORT:-5433}
PGDATA=${PGDATA:-$PWD/.cache/postgres}
if ! ls -d /usr/lib/postgresql/*/bin >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql
fi
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
# initdb and the server refuse to run as root: use the package's `postgres` user then.
as_owner() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
if [ "${1:-}" = stop ]; then
  as_owner "$PGBIN/pg_ctl" -D "$PGDATA" -m fast stop
  exit 0
fi
mkdir -p "$PGDATA"
[ "$(id -u)" = 0 ] && chown postgres "$PGDATA"
if [ ! -f "$PGDATA/PG_VERSION" ]; then
  as_owner "$PGBIN/initdb" -D "$PGDATA" -U modelmap --auth=trust -E UTF8 >/dev/null
fi
if ! as_owner "$PGBIN/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; then
  as_owner "$PGBIN/pg_ctl" -D "$PGDATA" -l "$PGDATA/server.log" -w \
    -o "-p $PGPORT -k /tmp -c listen_addresses=127.0.0.1 -c max_connections=200" start
fi
for db in modelmap mlflow; do
  "$PGBIN/psql" -h 127.0.0.1 -p "$PGPORT" -U modelmap -d postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname='$db'" | grep -q 1 ||
    "$PGBIN/createdb" -h 127.0.0.1 -p "$PGPORT" -U modelmap "$db"
done
cat <<INFO
PostgreSQL on 127.0.0.1:$PGPORT (data in $PGDATA). To use it:
  export MODELMAP_PG_HOST=127.0.0.1 MODELMAP_PG_PORT=$PGPORT MODELMAP_PG_USER=modelmap \\
         MODELMAP_PG_PASSWORD= MODELMAP_PG_DB=modelmap
  export MLFLOW_TRACKING_URI=postgresql+psycopg2://modelmap@127.0.0.1:$PGPORT/mlflow
  cat dagster_home/dagster.yaml dagster_home/storage.postgres.yaml > <your DAGSTER_HOME>/dagster.yaml
Stop it with: $PGBIN/pg_ctl -D $PGDATA stop   (as the postgres user when root)
INFO
