"""auditflow core: configuration, tracking, data contract, errors and the CLI.

Everything here is importable without Prefect and without starting any run.
"""

__version__ = "0.1.0"
