#!/bin/sh
# Creates the stack's databases (MLFLOW_DB, MLFLOW_AUTH_DB, PREFECT_DB from deploy/stack.env)
# when they are missing; safe to run again. Two callers, one script:
#   - the postgres image, on the first start of an empty postgres-data volume
#     (docker-compose.yml mounts it into /docker-entrypoint-initdb.d; psql reaches the
#     image's temporary server on its socket);
#   - deploy/native_stack.py, after initdb (PGHOST, PGPORT and PGPASSWORD point psql at it).
# Not `set -e`: the image sources this file when it is not executable.
for db in "$MLFLOW_DB" "$MLFLOW_AUTH_DB" "$PREFECT_DB"; do
    if [ -z "$db" ]; then
        echo "postgres-init.sh: MLFLOW_DB, MLFLOW_AUTH_DB and PREFECT_DB must be set" >&2
        exit 1
    fi
    exists=$(psql -v ON_ERROR_STOP=1 --no-psqlrc -tA --username "$POSTGRES_USER" --dbname postgres \
        -c "SELECT 1 FROM pg_database WHERE datname = '$db'") || exit 1
    if [ "$exists" != "1" ]; then
        psql -v ON_ERROR_STOP=1 --no-psqlrc -q --username "$POSTGRES_USER" --dbname postgres \
            -c "CREATE DATABASE \"$db\"" || exit 1
        echo "postgres-init.sh: created database $db"
    fi
done
