rule export_model:
    """The trained weights of the last segment in the framework's usual form."""
    input:
        last_segment,
    output:
        "results/{run}/model.{ext}",
    log:
        "logs/export_model/{run}.{ext}.log",
    wildcard_constraints:
        ext="pt|keras",
    params:
        run=model_settings,
    shell:
        '"$SEGTRAIN_PYTHON" "$SEGTRAIN_SCRIPTS"/export_model.py '
        "--run {params.run:q} --segment {input:q} --output {output:q} 2>> {log:q}"


rule merge_metrics:
    """One metrics table for the whole run, across all segments and attempts."""
    input:
        all_segments,
    output:
        "results/{run}/metrics.csv",
    log:
        "logs/merge_metrics/{run}.log",
    shell:
        '"$SEGTRAIN_PYTHON" "$SEGTRAIN_SCRIPTS"/merge_metrics.py '
        "--output {output:q} {input:q} 2>> {log:q}"
