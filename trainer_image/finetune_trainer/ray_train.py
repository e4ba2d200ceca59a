"""Run the TorchTrainer: one train_worker per rank, checkpoints in the run's storage.

The run's name comes from the job's name and UID, and its storage is the output's
checkpoints/ folder, so a retry (or `finetune run` again) finds its own checkpoints
through `ray.train.get_checkpoint()`, while a re-created job (new UID) starts fresh.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from finetune_operator import api

from finetune_trainer.checkpoints import SCORE
from finetune_trainer.layout import WorkerLayout
from finetune_trainer.resume_point import checkpoint_dir_name
from finetune_trainer.storage import s3_endpoint

if TYPE_CHECKING:
    from finetune_trainer.loop import WorkerSetup

# Ray Train helpers that a run of ours has no use for, by class name; each is an actor (a
# process to start beside the workers, on a start-up's critical path on a small machine):
# - DatasetsCallback starts a manager of Ray Datasets for the workers: we pass none;
# - PlacementGroupCleanerCallback starts a watcher that frees the workers' resources should
#   the controller die while the cluster lives on. A local instance dies with its driver
#   (see reaper); and without the dashboard its query of the controller fails every second.
UNUSED_CALLBACKS = frozenset({"DatasetsCallback"})
UNUSED_LOCAL_CALLBACKS = UNUSED_CALLBACKS | {"PlacementGroupCleanerCallback"}


def training_failures() -> tuple[type[BaseException], ...]:
    """What fit() raises when the run itself failed (after FailureConfig's retries)."""
    from ray.train import TrainingFailedError

    return (TrainingFailedError,)


def run_name(metadata: api.ObjectMeta) -> str:
    """The job's name plus the first 8 characters of its UID when it has one."""
    uid = (metadata.uid or "").replace("-", "")[:8]
    return f"{metadata.name}-{uid}" if uid else metadata.name


def checkpoint_storage(storage: str) -> dict[str, Any]:
    """RunConfig storage arguments; an S3 endpoint (MinIO, Ceph) needs an explicit filesystem."""
    endpoint = s3_endpoint()
    if not (storage.startswith("s3://") and endpoint):
        return {"storage_path": storage}
    import pyarrow.fs

    return {
        "storage_path": storage.removeprefix("s3://"),
        "storage_filesystem": pyarrow.fs.S3FileSystem(endpoint_override=endpoint),
    }


def checkpoint_uri(storage: str, name: str, step: int) -> str:
    """Where Ray Train keeps the checkpoint of `step`: storage / run name / checkpoint folder."""
    return f"{storage.rstrip('/')}/{name}/{checkpoint_dir_name(step)}"


def checkpoint_config(spec: api.FineTuneJobSpec) -> Any:
    """Keep `keep` checkpoints: the newest, or under early stopping the best by validation
    loss, whose weights the outputs get (Ray Train always keeps the newest too, to resume)."""
    from ray.train import CheckpointConfig

    if spec.evaluation.early_stopping is None:
        return CheckpointConfig(num_to_keep=spec.checkpointing.keep)
    return CheckpointConfig(
        num_to_keep=spec.checkpointing.keep,
        checkpoint_score_attribute=SCORE,
        checkpoint_score_order="min",
    )


def fit(setup: WorkerSetup, *, layout: WorkerLayout, name: str, storage: str) -> Any:
    """Run train_worker on every rank; returns Ray's Result (raises on a failed run).

    The setup travels as an object reference: Ray Train also hands train_loop_config to its
    controller, which would otherwise unpickle it, importing the training loop's modules
    (about 2 s of a start-up's critical path) for a value it never reads."""
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from finetune_trainer import cluster
    from finetune_trainer.loop import train_worker

    local = not cluster.in_cluster()
    unused = UNUSED_LOCAL_CALLBACKS if local else UNUSED_CALLBACKS

    class Trainer(TorchTrainer):
        def _create_default_callbacks(self) -> list[Any]:
            # A private hook of Ray Train: should it go, the helpers simply start again.
            callbacks: list[Any] = super()._create_default_callbacks()  # type: ignore[misc]
            return [c for c in callbacks if type(c).__name__ not in unused]

        def _initialize_and_run_controller(self, **controller: Any) -> Any:
            # Another private hook; if Ray renames it or its argument, nothing is replaced.
            if local and "scaling_policy" in controller:
                controller["scaling_policy"] = without_autoscaler(controller["scaling_policy"])
            return super()._initialize_and_run_controller(**controller)  # type: ignore[misc]

    spec = setup.spec
    trainer = Trainer(
        train_worker,
        train_loop_config={"setup": ray.put(setup)},
        scaling_config=ScalingConfig(
            num_workers=layout.num_workers,
            use_gpu=layout.use_gpu,
            resources_per_worker={"CPU": layout.cpus_per_worker}
            | ({"GPU": 1} if layout.use_gpu else {}),
        ),
        run_config=RunConfig(
            name=name,
            **checkpoint_storage(storage),
            failure_config=FailureConfig(max_failures=spec.run_policy.backoff_limit),
            checkpoint_config=checkpoint_config(spec),
        ),
        # gloo on CPU: NCCL needs GPUs.
        torch_config=TorchConfig(backend="nccl" if layout.use_gpu else "gloo"),
    )
    return trainer.fit()


def without_autoscaler(policy: Any) -> Any:
    """Ray Train's fixed-size scaling policy, less its requests to the autoscaling
    coordinator. On a cluster those tell an autoscaler what the workers need; a local
    instance has none, and the coordinator is one more actor (a process, about 0.8 s on a
    start-up's critical path) that outlives the run. Any other policy, or a Ray whose
    private module moved, keeps Ray's own."""
    try:
        from ray.train.v2._internal.execution.scaling_policy import FixedScalingPolicy
    except ImportError:
        return policy
    if type(policy) is not FixedScalingPolicy:
        return policy

    class FixedWithoutAutoscaler(FixedScalingPolicy):
        def after_controller_start(self, train_run_context: Any) -> None:
            pass

        def _maybe_send_resource_request(self) -> None:
            pass

    return FixedWithoutAutoscaler(scaling_config=policy.scaling_config)
