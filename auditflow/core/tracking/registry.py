"""The MLflow Model Registry as the release gate uses it: versions, aliases and their tags."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from typing import Any

from auditflow.core.errors import TrackingError
from auditflow.core.names import VERDICT_PREFIX
from auditflow.core.tracking import Tracker, _fluent_tracking_uri, _quote

log = logging.getLogger(__name__)

# One registered model per model line; each pipeline run that reaches the release step adds a
# version whose `run_id` is the pipeline (parent) run and whose source is the ONNX model the
# export stage logged. Aliases (`candidate`, `champion`) point at versions; a version's
# `release/status` tag says what became of it.
RUN_TAG = "auditflow.run_id"  # model-version tag: the pipeline (parent) run
EXPORT_RUN_TAG = "auditflow.export_run_id"  # model-version tag: the stage run that logged the model
VARIANT_TAG = "auditflow.variant"  # model-version tag of a variant registered in the plain file's place ("adjusted")


@dataclass(frozen=True)
class ModelVersionInfo:
    """One registered version, read back from the registry."""

    name: str
    version: str
    run_id: str  # the pipeline (parent) run it came from; "" when unknown
    aliases: tuple[str, ...]
    tags: dict[str, str]
    source: str  # the model URI it was registered from
    created_ms: int


@dataclass(frozen=True)
class VersionRow:
    """A version with what its pipeline run says about it, for listings."""

    version: ModelVersionInfo
    run_name: str  # "" when the run is no longer in the store
    run_status: str
    verdicts: dict[str, str]  # `verdict/<check>` tags of the pipeline run, without the prefix
    metrics: dict[str, float]  # the requested metrics the pipeline run holds


def _version_info(mv: Any) -> ModelVersionInfo:
    tags = dict(mv.tags or {})
    return ModelVersionInfo(
        name=mv.name,
        version=str(mv.version),
        run_id=tags.get(RUN_TAG) or mv.run_id or "",
        aliases=tuple(sorted(mv.aliases or ())),
        tags=tags,
        source=mv.source or "",
        created_ms=int(mv.creation_timestamp or 0),
    )


class ModelRegistry:
    """Registry calls on the store of `tracker`: register a run's model, move and read aliases.

    Errors of the store become `TrackingError` naming the model, version or alias."""

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker
        self.client = tracker.client

    def _wrap(self, what: str, err: Exception) -> TrackingError:
        return TrackingError(f"model registry at {self.tracker.uri}: cannot {what}: {err}")

    def register(
        self, name: str, run_id: str, model_uri: str, *, tags: dict[str, str] | None = None
    ) -> ModelVersionInfo:
        """A new version of registered model `name` (created on first use) from `model_uri`
        (`models:/<model id>`, as the export stage logged it), linked to pipeline run `run_id`."""
        from mlflow.exceptions import MlflowException

        model_id = model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None
        try:
            if not self.client.search_registered_models(filter_string=f"name = '{_quote(name)}'"):
                self.client.create_registered_model(
                    name, description="Image classifier versions registered by auditflow pipeline runs."
                )
            # The SQL registry resolves `models:/<id>` sources through MLflow's global client.
            with _fluent_tracking_uri(self.tracker.uri):
                mv = self.client.create_model_version(
                    name,
                    source=model_uri,
                    run_id=run_id,
                    tags={RUN_TAG: run_id, **(tags or {})},
                    model_id=model_id,
                    await_creation_for=0,
                )
        except MlflowException as err:
            raise self._wrap(f"register {model_uri} of run {run_id} as {name!r}", err) from err
        if model_id:  # what `mlflow.register_model` records, so the logged model links to its versions
            try:
                model = self.client.get_logged_model(model_id)
                known = json.loads(model.tags.get("mlflow.modelVersions", "[]"))
                entry = [{"name": name, "version": str(mv.version)}]
                self.client.set_logged_model_tags(model_id, {"mlflow.modelVersions": json.dumps(known + entry)})
            except (MlflowException, ValueError):
                log.debug("could not link logged model %s to %s v%s", model_id, name, mv.version)
        return _version_info(mv)

    def version(self, name: str, version: str) -> ModelVersionInfo:
        from mlflow.exceptions import MlflowException

        try:
            return _version_info(self.client.get_model_version(name, str(version)))
        except MlflowException as err:
            raise self._wrap(f"find version {version} of {name!r}", err) from err

    def by_alias(self, name: str, alias: str) -> ModelVersionInfo | None:
        """The version alias `alias` of model `name` points at; None when the model or the alias
        does not exist."""
        from mlflow.exceptions import MlflowException

        if not self.exists(name):
            return None
        try:
            return _version_info(self.client.get_model_version_by_alias(name, alias))
        except MlflowException as err:
            if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE"):
                return None
            raise self._wrap(f"read alias {alias!r} of {name!r}", err) from err

    def set_alias(self, name: str, alias: str, version: str) -> None:
        """Point `alias` at `version` (it leaves the version it pointed at before)."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.set_registered_model_alias(name, alias, str(version))
        except MlflowException as err:
            raise self._wrap(f"set alias {alias!r} of {name!r} to version {version}", err) from err

    def delete_alias(self, name: str, alias: str) -> None:
        """Remove `alias` from model `name`; nothing when it is not set."""
        from mlflow.exceptions import MlflowException

        if self.by_alias(name, alias) is None:
            return
        try:
            self.client.delete_registered_model_alias(name, alias)
        except MlflowException as err:
            raise self._wrap(f"delete alias {alias!r} of {name!r}", err) from err

    def describe_version(self, name: str, version: str, description: str) -> None:
        """Set the description the MLflow UI shows on version `version` of model `name`."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.update_model_version(name, str(version), description=description)
        except MlflowException as err:
            raise self._wrap(f"describe version {version} of {name!r}", err) from err

    def set_version_tags(self, name: str, version: str, tags: dict[str, Any]) -> None:
        from mlflow.exceptions import MlflowException

        try:
            for key, value in tags.items():
                self.client.set_model_version_tag(name, str(version), key, str(value))
        except MlflowException as err:
            raise self._wrap(f"tag version {version} of {name!r}", err) from err

    def exists(self, name: str) -> bool:
        return bool(self.client.search_registered_models(filter_string=f"name = '{_quote(name)}'"))

    def model_names(self) -> list[str]:
        """Every registered model in the store, by name."""
        return sorted(m.name for m in self.client.search_registered_models())

    def versions(self, name: str, run_id: str | None = None) -> list[ModelVersionInfo]:
        """Versions of `name` (only those of pipeline run `run_id` when given), newest first."""
        if not self.exists(name):
            return []
        found = self.client.search_model_versions(f"name = '{_quote(name)}'")
        # search results carry no aliases; the registered model holds them (alias -> version)
        held: dict[str, list[str]] = {}
        for alias, version in self.client.get_registered_model(name).aliases.items():
            held.setdefault(str(version), []).append(alias)
        out = [replace(_version_info(mv), aliases=tuple(sorted(held.get(str(mv.version), [])))) for mv in found]
        if run_id is not None:
            out = [v for v in out if v.run_id == run_id]
        return sorted(out, key=lambda v: int(v.version), reverse=True)

    def list_versions(self, name: str, metrics: tuple[str, ...] = ()) -> list[VersionRow]:
        """Versions of `name`, newest first, each with its pipeline run's verdict tags and the
        `metrics` that run holds (runs deleted from the store give empty ones)."""
        from mlflow.exceptions import MlflowException

        rows = []
        for version in self.versions(name):
            try:
                run = self.client.get_run(version.run_id) if version.run_id else None
            except MlflowException:
                run = None
            tags = dict(run.data.tags) if run else {}
            values = dict(run.data.metrics) if run else {}
            rows.append(
                VersionRow(
                    version=version,
                    run_name=run.info.run_name if run else "",
                    run_status=run.info.status if run else "",
                    verdicts={
                        k.removeprefix(VERDICT_PREFIX): v for k, v in tags.items() if k.startswith(VERDICT_PREFIX)
                    },
                    metrics={k: values[k] for k in metrics if k in values},
                )
            )
        return rows
