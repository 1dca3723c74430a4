rule plot_run:
    """Figures and the plan-versus-measured table of one run, for the HTML report."""
    input:
        plan="results/{run}/plan.json",
        plan_txt="results/{run}/plan.txt",
        metrics="results/{run}/metrics.csv",
        segments=all_segments,
    output:
        training=report(
            "results/{run}/report/training.svg",
            caption="../report/training.rst",
            category="{run}",
            subcategory="Training",
        ),
        checkpoints=report(
            "results/{run}/report/checkpoints.svg",
            caption="../report/checkpoints.rst",
            category="{run}",
            subcategory="Checkpoints",
        ),
        timeline=report(
            "results/{run}/report/timeline.svg",
            caption="../report/timeline.rst",
            category="{run}",
            subcategory="Timeline",
        ),
        table="results/{run}/report/plan_vs_measured.csv",
        page=report(
            "results/{run}/report/plan.html",
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
        expand("results/{run}/metrics.csv", run=RUNS),
    output:
        report(
            "results/compare/loss.svg",
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
