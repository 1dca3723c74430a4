"""``--executor dsri``: the stock Kubernetes executor plugin, with Jobs that fit a real pod's life.

Snakemake finds executor plugins by their top-level module name, so this thin module lives in its
own installable folder; what it changes in each Job is in ``segtrain.k8s`` (see there for why).
Settings are the stock plugin's (``--dsri-namespace``, ``--dsri-persistent-volumes``, ...) plus
``--dsri-ttl-seconds-after-finished`` and ``--dsri-shm-size-mb``.
"""

from dataclasses import dataclass, field, replace

import snakemake_executor_plugin_kubernetes as stock

# The image has every package the job runs (the fs storage plugin included): no `pip install` in
# front of each job's command, so a node without internet can run it.
common_settings = replace(stock.common_settings, auto_deploy_default_storage_provider=False)


@dataclass
class ExecutorSettings(stock.ExecutorSettings):
    ttl_seconds_after_finished: int = field(
        default=3600,
        metadata={"help": "Seconds a finished Job stays before Kubernetes deletes it (DSRI asks for a value)."},
    )
    shm_size_mb: int = field(
        default=8192,
        metadata={"help": "Size of the in-memory /dev/shm of each job (DataLoader workers, NCCL)."},
    )


class _PatchingBatchApi:
    """Hands every Job the stock plugin creates through segtrain.k8s.patch_job first."""

    def __init__(self, api, executor):
        self._api, self._executor = api, executor

    def create_namespaced_job(self, namespace, body, **kwargs):
        # imported here: a broken segtrain must not break `snakemake` for every other executor
        from segtrain.k8s import describe, patch_job

        executor = self._executor
        job = executor._submitting
        settings = executor.workflow.executor_settings
        patch_job(body, runtime_minutes=job.resources.get("runtime") if job is not None else None,
                  ttl_seconds=settings.ttl_seconds_after_finished, shm_mb=settings.shm_size_mb)
        executor.logger.info(describe(body))
        return self._api.create_namespaced_job(namespace, body, **kwargs)

    def __getattr__(self, name):
        return getattr(self._api, name)


class Executor(stock.Executor):
    def __post_init__(self):
        super().__post_init__()
        self._submitting = None
        self.batchapi = _PatchingBatchApi(self.batchapi, self)

    def run_job(self, job):
        self._submitting = job
        try:
            super().run_job(job)
        finally:
            self._submitting = None
