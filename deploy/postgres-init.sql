-- Runs once, on the first start of an empty postgres-data volume
-- (mounted into /docker-entrypoint-initdb.d by docker-compose.yml).
-- The image itself creates POSTGRES_DB (= mlflow); this adds the Prefect database.
-- Executed with psql, so \gexec is available and the statement is idempotent.
SELECT 'CREATE DATABASE prefect'
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'prefect')\gexec
