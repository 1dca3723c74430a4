rule plot_run:
    """Figures and the plan-versus-measured table of one run, for the HTML report."""
    input:
        plan=Files.plan,
        plan_txt=Files.plan_txt,
        metrics=Files.metrics,
        segments=all_segments,
    output:
        training=report(
            Files.of(Files.report, name="training.svg"),
            caption="../report/training.rst",
            category="{run}",
            subcategory="Training",
        ),
        checkpoints=report(
            Files.of(Files.report, name="checkpoints.svg"),
            caption="../report/checkpoints.rst",
            category="{run}",
            subcategory="Checkpoints",
        ),
        timeline=report(
            Files.of(Files.report, name="timeline.svg"),
            caption="../report/timeline.rst",
            category="{run}",
            subcategory="Timeline",
        ),
        table=Files.of(Files.report, name="plan_vs_measured.csv"),
        page=report(
            Files.of(Files.report, name="plan.html"),
            caption="../report/plan.rst",
            category="{run}",
            subcategory="Plan",
        ),
    log:
        "logs/plot_run/{run}.log",
    params:
        segments=segment_count,
    shell:
        '"${{SEGTRAIN_IMAGE_PYTHON:-$SEGTRAIN_PYTHON}}" "$SEGTRAIN_SCRIPTS"/plot_run.py '
        "--run {wildcards.run:q} --plan {input.plan:q} "
        "--metrics {input.metrics:q} --training {output.training:q} --checkpoints {output.checkpoints:q} "
        "--timeline {output.timeline:q} --table {output.table:q} "
        "--page {output.page:q} --plan-txt {input.plan_txt:q} --first-segment {input.segments[0]:q} --count {params.segments} 2>> {log:q}"


rule compare_runs:
    """Every run's training loss in one figure."""
    input:
        expand(Files.metrics, run=RUNS),
    output:
        report(
            Files.compare,
            caption="../report/compare.rst",
            category="All runs",
        ),
    log:
        "logs/compare_runs.log",
    params:
        names=list(RUNS),
    shell:
        '"${{SEGTRAIN_IMAGE_PYTHON:-$SEGTRAIN_PYTHON}}" "$SEGTRAIN_SCRIPTS"/compare_runs.py '
        "--output {output:q} --names {params.names:q} "
        "--metrics {input:q} 2>> {log:q}"
