rule measure_checkpoint_cost:
    """Time training steps and checkpoint saves/loads on the storage the run's checkpoints use."""
    output:
        Files.costs,
    log:
        "logs/measure_checkpoint_cost/{run}.log",
    benchmark:
        "benchmarks/measure_checkpoint_cost/{run}.tsv"
    threads: lambda wildcards: RUNS[wildcards.run].threads * RUNS[wildcards.run].processes
    # One at a time where the profile limits measure_slots (local, dsri): measure jobs started
    # together measured each other's start-up, several times what a segment later saw, and the
    # plan refused a start-up share it would never have had.
    resources:
        measure_slots=measure_slot,
        # several nodes (SLURM): the job's nodes, one task on each, started by the job's own srun
        nodes=several_nodes,
        tasks=several_nodes,
        mpi=started_by_srun,
        # not the plugin's --ntasks-per-gpu=<tasks> (one task per node drives all the node's GPUs)
        tasks_per_gpu=lambda wildcards: 0 if RUNS[wildcards.run].nodes > 1 else None,
    params:
        run=measure_settings,
    shell:
        '"${{SEGTRAIN_IMAGE_PYTHON:-$SEGTRAIN_PYTHON}}" "$SEGTRAIN_SCRIPTS"/measure_checkpoint_cost.py '
        "--run {params.run:q} --output {output:q} >> {log:q} 2>&1 && "
        # then the resume check (segtrain.check): the run's own code, k steps straight against a
        # restore at k/2 in a new process; its verdict goes into the costs the plan reads
        '"${{SEGTRAIN_IMAGE_PYTHON:-$SEGTRAIN_PYTHON}}" "$SEGTRAIN_SCRIPTS"/check_resume.py '
        "--run {params.run:q} --costs {output:q} --log {log:q} >> {log:q} 2>&1"
