"""Prefect flows: composition of tasks only; the deployment entrypoints."""
