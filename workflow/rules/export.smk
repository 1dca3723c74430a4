rule export_run:
    """The trained weights in the framework's usual form and one metrics table across all segments."""
    input:
        all_segments,
    output:
        model="results/{run}/model.pt",
        metrics="results/{run}/metrics.csv",
    params:
        run=model_settings,
    log:
        "logs/export_run/{run}.log",
    shell:
        "{PYTHON} {SCRIPTS}/export_run.py --run {params.run:q} --model {output.model:q} "
        "--metrics {output.metrics:q} {input:q} 2>> {log:q}"
