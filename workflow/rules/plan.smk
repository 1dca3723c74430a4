# A Snakemake checkpoint: the number of train_segment jobs is only known once the costs are measured.
checkpoint plan_segments:
    """Checkpoint interval, steps per segment and the segments, from the measured costs and time_limit."""
    input:
        costs=Files.costs,
        settings=plan_settings_record,
    output:
        plan=Files.plan,
        table=Files.plan_txt,
    log:
        "logs/plan_segments/{run}.log",
    params:
        run=plan_settings,
    shell:
        '"${{SEGTRAIN_IMAGE_PYTHON:-$SEGTRAIN_PYTHON}}" "$SEGTRAIN_SCRIPTS"/plan_segments.py '
        "--run {params.run:q} --costs {input.costs:q} "
        "--plan-json {output.plan:q} --plan-txt {output.table:q} 2>> {log:q}"
