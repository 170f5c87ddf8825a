"""Reference models of the privacy audit: one Prefect task per model, so a Dask task runner can
spread them over machines; each is cached by data digest, recipe and training indices.

The plan (which images each model trains on) and the tier decision are pure and live in
`auditflow.models.references`. Nothing here talks to MLflow: the privacy stage logs what the
models cost and whether they came from the cache.
"""

from __future__ import annotations

import dataclasses

from prefect import task
from prefect.cache_policies import NO_CACHE

from auditflow.core.config import DataConfig, PrivacyConfig, TrainConfig
from auditflow.core.data import Snapshot, make_splits
from auditflow.core.paths import cache_dir
from auditflow.core.predictions import Predictions
from auditflow.models.references import ReferenceOutcome, plan_for, reference_recipe, train_reference
from auditflow.models.training.runtime import resolve_runtime
from auditflow.models.training.stage import exclusive
from auditflow.tasks.run import dask_worker


@task(name="reference-model", cache_policy=NO_CACHE, task_run_name="reference-model-{index}")
def train_reference_model(
    index: int,
    predictions: str,
    snapshot_path: str,
    data_cfg: DataConfig,
    train_cfg: TrainConfig,
    epochs: int,
    cfg: PrivacyConfig,
    workdir: str,
) -> ReferenceOutcome:
    """Train (or fetch from the cache) reference model `index` of this run's plan."""
    audit = Predictions.load(predictions).audit
    splits = make_splits(Snapshot.open(snapshot_path), data_cfg)
    plan = plan_for(
        audit,
        len(splits.train_y),
        snapshot_path=snapshot_path,
        data_cfg=data_cfg,
        train_cfg=train_cfg,
        epochs=epochs,
        cfg=cfg,
    )
    spec = plan.specs[index]
    cache = cache_dir(workdir) / "references"
    with exclusive(cache / spec.key):  # two runs must not train the same model at once
        outcome = train_reference(
            splits,
            spec,
            reference_recipe(train_cfg, epochs, train_cfg.seed),
            runtime=resolve_runtime(train_cfg.device, train_cfg.precision, train_cfg.num_threads),
            members=audit.member_index,
            nonmembers=audit.nonmember_index,
            cache=cache,
            queries=cfg.queries,
        )
    return dataclasses.replace(outcome, worker=dask_worker())
