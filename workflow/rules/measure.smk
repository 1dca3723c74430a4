rule measure_checkpoint_cost:
    """Time training steps and checkpoint saves/loads on the storage the run's checkpoints use."""
    output:
        "results/{run}/costs.json",
    log:
        "logs/measure_checkpoint_cost/{run}.log",
    benchmark:
        "benchmarks/measure_checkpoint_cost/{run}.tsv"
    threads: lambda wildcards: RUNS[wildcards.run]["threads"]
    params:
        run=measure_settings,
    shell:
        '"${{SEGTRAIN_IMAGE_PYTHON:-$SEGTRAIN_PYTHON}}" "$SEGTRAIN_SCRIPTS"/measure_checkpoint_cost.py '
        "--run {params.run:q} --output {output:q} 2>> {log:q}"
