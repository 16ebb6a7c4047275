"""One Tune trial: the whole pipeline under its trial id, the watched stage's epochs reported to Tune."""

from __future__ import annotations

from pathlib import Path

from ups import config as C
from ups.stages import registry
from ups.sweep.space import trial_config


class _EpochReports:
    """Forward only the watched stage's epoch-end rows (not mid-epoch checkpoints) to Tune."""

    @staticmethod
    def make(metric: str):
        from ray.tune.integration.ray_train import TuneReportCallback

        class EpochReports(TuneReportCallback):
            def after_report(self, run_context, metrics, checkpoint):
                if metrics and metric in metrics[0]:
                    row = metrics[0]
                    self._training_actor_item_queue.put(
                        {"epoch": row["epoch"], metric: row[metric], "stage": row["stage"]}
                    )

        return EpochReports()


def trial(params: dict, *, base: dict, trials_uri: str, sweep: str, stage: str) -> None:
    """One Tune trial: the whole pipeline under its trial id, reporting the watched stage."""
    import ray.tune

    from ups import pipeline

    trial_id = ray.tune.get_context().get_trial_id()
    cfg = trial_config(base, params, sweep)
    loaded = C.LoadedConfig(cfg, Path(f"{sweep}.yaml"), {})
    metric = registry.get(stage).val_metric
    summary = pipeline.run(
        loaded,
        pipeline.PipelineOptions(
            name=f"trial-{trial_id}",
            storage=trials_uri,
            quiet=True,
            eval_test=False,
            lock=False,  # Tune runs one actor per trial; a lingering dead trial must not block its retry
            stage_callbacks={stage: [_EpochReports.make(metric)]},
        ),
    )
    rec, ev = summary.stages[stage], summary.eval
    assert rec.best is not None and ev is not None, f"trial {trial_id}: no best metric of {stage}, or no evaluation"
    ray.tune.report(
        {
            "epoch": rec.epochs + 1,
            metric: rec.best.value,
            "final": True,
            "eval_nRMSE": ev.nRMSE,
            "eval_persistence_nRMSE": ev.persistence_nRMSE,
        }
    )
