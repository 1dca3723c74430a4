# Periodic checkpoints live in results/{run}/ckpt/, outside the declared output: Snakemake deletes
# a job's outputs before it reruns the job, and a rerun must resume from the newest of them.
# The plan is read through the input functions but is not an input: re-planning must not retrain
# finished segments, and their entries in the plan never change (see segment_settings).
rule train_segment:
    """Resume from the previous segment (or the newest periodic checkpoint) and train to the planned end step."""
    input:
        previous_segment,
    output:
        directory(Files.segment),
    log:
        "logs/train_segment/{run}/{segment}.log",
    benchmark:
        "benchmarks/train_segment/{run}/{segment}.tsv"
    # A high cap: whether a failed segment is tried again is decided by runtime_minutes (common.smk),
    # from its attempts: progress always continues, repeating failures stop the run. Only the
    # Snakemake the user started retries: inside a cluster job (SLURM, a Kubernetes pod) a retry
    # would start on a walltime already spent, and SLURM signals a job once; each attempt there
    # is a new job.
    retries: SEGMENT_RETRY_CAP if workflow.is_main_process else 0
    # every process of a segment (processes > 1: torchrun's ranks) trains with the run's threads
    threads: lambda wildcards: RUNS[wildcards.run].threads * RUNS[wildcards.run].processes
    resources:
        runtime=runtime_minutes,
        # several nodes (SLURM): the job's nodes, one task on each, started by the job's own srun
        nodes=several_nodes,
        tasks=several_nodes,
        mpi=started_by_srun,
        # not the plugin's --ntasks-per-gpu=<tasks> (one task per node drives all the node's GPUs)
        tasks_per_gpu=lambda wildcards: 0 if RUNS[wildcards.run].nodes > 1 else None,
    params:
        model=train_settings,
        segment=segment_settings,
    shell:
        '"${{SEGTRAIN_IMAGE_PYTHON:-$SEGTRAIN_PYTHON}}" "$SEGTRAIN_SCRIPTS"/train_segment.py '
        "--run {params.model:q} --segment {params.segment:q} "
        # the script's own output (print) goes to the job's log too
        "--previous '{input}' --threads {threads} --output {output:q} >> {log:q} 2>&1; "
        # exit 0 without a finished output (a script's os._exit): fail with the reason, not as missing files
        f"test -e {{output:q}}/{SEGMENT_SUMMARY} || "
        '"${{SEGTRAIN_IMAGE_PYTHON:-$SEGTRAIN_PYTHON}}" "$SEGTRAIN_SCRIPTS"/check_segment_output.py '
        "--output {output:q} --log {log:q}"
