"""A run's settings, resolved once: the one object every job of a run receives.

``segtrain.config.resolve`` checks the config against its schema, applies the defaults, turns
durations into seconds and hashes the model definition, and makes one ``RunSettings`` per run.
The workflow hands them to its jobs whole, through the environment (``for_jobs``/``from_jobs``);
no job merges defaults again. Framework-free: the rules import it too.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

DEFINITIONS_ENV = "SEGTRAIN_DEFINITIONS"


@dataclass(frozen=True)
class RunSettings:
    """One run's resolved settings. The defaults are the config schema's
    (``segtrain/schemas/config.schema.yaml``, checked equal by ``tests/test_config.py``); the keys
    are explained for users in ``config/README.md``."""

    # -- what trains --
    name: str = ""
    """The run's name: its wildcard and its folder under results/."""
    framework: str = "torch"
    """The backend that trains the task: torch or keras."""
    task: str = ""
    """The task file (the pipeline runs the loop), or a script run's script."""
    script_args: tuple[str, ...] | None = None
    """A script run's arguments; None for a task run."""
    total_steps: int = 0
    """Training steps of the whole run."""
    params: dict = field(default_factory=dict)
    """Hyper-parameters handed to the task's functions."""
    seed: int = 0
    """Seed of the initialisation, dropout and data order."""
    batch_size: int = 32
    """Samples per training step (all processes together)."""
    validation_split: float = 0.1
    """Share of the samples held out for validation when the task has none of its own (0 for a script)."""

    # -- how a step is computed (PyTorch loop) --
    threads: int = 1
    """CPU threads of each training process."""
    processes: int = 1
    """Processes that train each segment together on each node (torchrun, DDP)."""
    nodes: int = 1
    """Nodes of a SLURM job that train each segment together (srun, one torchrun per node)."""
    data_parallel: str = "ddp"
    """How several processes share the model: ddp (replicated) or fsdp2 (sharded by fully_shard)."""
    allow_reshard: bool = False
    """Whether a resume at another number of processes than the checkpoint's is allowed (not bitwise)."""
    continue_edited: str | None = None
    """The edited definition (its hash) a run may go on with from checkpoints of the one before."""
    precision: str = "fp32"
    """fp32, bf16 or fp16 (autocast; fp16 with a checkpointed GradScaler)."""
    accumulate: int = 1
    """Micro-batches per optimizer step."""
    clip_grad_norm: float | None = None
    """The gradients' total norm is clipped to this before each optimizer step (None: no clipping)."""
    num_workers: int = 0
    """DataLoader worker processes (map-style Datasets)."""
    deterministic: bool | str = True
    """True, False or 'warn': deterministic kernels, for bitwise-identical resumes."""

    # -- the job's time --
    time_limit: str | float = "24h"
    """The job time limit as the user gave it."""
    time_limit_seconds: float = 86400.0
    """``time_limit`` in seconds."""
    safety_margin: str | float = "2%"
    """Time kept free at the end of a job, as the user gave it."""
    margin_seconds: float = 1728.0
    """``safety_margin`` in seconds."""
    grace_period: str | float = "30s"
    """Time between the platform's SIGTERM and its SIGKILL, as the user gave it."""
    grace_period_seconds: float = 30.0
    """``grace_period`` in seconds."""
    max_startup_share: str | float = "25%"
    """The largest share of a job that start-up and restore may take, as the user gave it."""
    max_startup_percent: float = 25.0
    """``max_startup_share`` in percent."""

    # -- checkpoints --
    checkpoint: dict = field(default_factory=lambda: {"max_overhead": "1%"})
    """How the interval is chosen, as the user gave it (exactly one key)."""
    policy: dict = field(default_factory=lambda: {"max_overhead_percent": 1.0})
    """``checkpoint`` in the planner's units (``planning.Policy``'s keyword arguments)."""
    steps_per_segment: int | str = "auto"
    """'auto' or a fixed number of steps per job."""
    async_save: bool | str = "auto"
    """Background writes of periodic checkpoints: 'auto' (the plan chooses), True or False."""
    keep: int = 2
    """Newest periodic checkpoints kept."""

    # -- evaluation and logging --
    eval_every: int | str = "auto"
    """'auto' (at every checkpoint) or a number of steps."""
    monitor: str = "val_loss"
    """The metric that picks the best checkpoint."""
    mode: str = "min"
    """Whether a lower (min) or higher (max) monitor value is better."""
    log_every: int = 10
    """A metrics row every this many steps."""

    # -- the measure job --
    measure_steps: int = 30
    """Training steps timed by measure_checkpoint_cost."""
    measure_saves: int = 3
    """Checkpoint saves and loads timed by measure_checkpoint_cost."""
    resume_check: str = "auto"
    """What a divergence of the measure job's resume check does: refuse, warn, off; auto: refuse
    for deterministic: true, else warn (``segtrain.check``)."""
    resume_check_steps: int = 4
    """The steps the resume check trains; the restore is at half of them."""

    # -- what a resume must find again (segtrain.definition) --
    model_hash: str = ""
    """The config-level hash of the model (framework, task, params, batch_size, seed, validation_split)."""
    model_definition: dict = field(default_factory=dict)
    """Everything that defines the model and its trajectory, task sources included."""
    definition_hash: str = ""
    """The hash of ``model_definition`` ('' before it is known)."""

    @property
    def is_script(self) -> bool:
        """Whether the run brings its own training script instead of a task file."""
        return self.script_args is not None

    @property
    def world_size(self) -> int:
        """The processes that train each segment, on all its nodes together."""
        return self.processes * self.nodes

    @property
    def training(self) -> dict:
        """How a step of the pipeline's PyTorch loop is computed (the backends' ``training``)."""
        return {"precision": self.precision, "accumulate": self.accumulate, "clip_grad_norm": self.clip_grad_norm,
                "deterministic": self.deterministic, "num_workers": self.num_workers,
                "data_parallel": self.data_parallel}

    def replace(self, **changes) -> RunSettings:
        return dataclasses.replace(self, **changes)

    def subset(self, keys) -> dict:
        """The named settings as a plain dict (a rule's params: their JSON must stay as it was)."""
        return {k: _plain(getattr(self, k)) for k in keys}

    def to_dict(self) -> dict:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict) -> RunSettings:
        """Settings from ``to_dict``'s form (JSON read back); an unknown key is an error, not ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise TypeError(f"unknown run settings: {', '.join(unknown)}")
        data = dict(data)
        if data.get("script_args") is not None:
            data["script_args"] = tuple(data["script_args"])
        return cls(**data)


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def for_jobs(runs: dict[str, RunSettings]) -> str:
    """Every run's settings as JSON for the jobs' environment (DEFINITIONS_ENV): each job reads its
    run's from there, so every setting the config accepts reaches the job that uses it. A rule's
    params hold only the keys whose change must rerun it (params must not change for runs started
    by earlier versions, or Snakemake would retrain them)."""
    return json.dumps({name: run.to_dict() for name, run in runs.items()}, sort_keys=True, default=str)


def from_jobs(params: dict, environ: dict | None = None) -> RunSettings:
    """A job's run settings: its run's entry in the environment, with the job's ``params`` over it
    (a rule's params win where both have a key)."""
    import os

    environ = os.environ if environ is None else environ
    entry = json.loads(environ.get(DEFINITIONS_ENV) or "{}").get(params.get("name"), {})
    return RunSettings.from_dict({**entry, **params})
