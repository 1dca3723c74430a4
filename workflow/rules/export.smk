rule export_torch:
    """The last and the best weights of a PyTorch run, as state_dict files and as safetensors."""
    input:
        segments=all_segments,
    output:
        last=Files.of(Files.model, ext="pt"),
        last_safetensors=Files.of(Files.model, ext="safetensors"),
        best=Files.of(Files.model_best, ext="pt"),
        best_safetensors=Files.of(Files.model_best, ext="safetensors"),
    log:
        "logs/export_model/{run}.log",
    wildcard_constraints:
        run=runs_of("torch"),
    params:
        run=model_settings,
        segments=segment_count,
    shell:
        '"${{SEGTRAIN_IMAGE_PYTHON:-$SEGTRAIN_PYTHON}}" "$SEGTRAIN_SCRIPTS"/export_model.py '
        "--run {params.run:q} --first-segment {input.segments[0]:q} --count {params.segments} "
        "--output last.pt={output.last:q} last.safetensors={output.last_safetensors:q} "
        "best.pt={output.best:q} best.safetensors={output.best_safetensors:q} 2>> {log:q}"


rule export_keras:
    """The last and the best model of a Keras run, as .keras files and as weights-only .weights.h5."""
    input:
        segments=all_segments,
    output:
        last=Files.of(Files.model, ext="keras"),
        last_weights=Files.of(Files.model, ext="weights.h5"),
        best=Files.of(Files.model_best, ext="keras"),
        best_weights=Files.of(Files.model_best, ext="weights.h5"),
    log:
        "logs/export_model/{run}.log",
    wildcard_constraints:
        run=runs_of("keras"),
    params:
        run=model_settings,
        segments=segment_count,
    shell:
        '"${{SEGTRAIN_IMAGE_PYTHON:-$SEGTRAIN_PYTHON}}" "$SEGTRAIN_SCRIPTS"/export_model.py '
        "--run {params.run:q} --first-segment {input.segments[0]:q} --count {params.segments} "
        "--output last.keras={output.last:q} last.weights.h5={output.last_weights:q} "
        "best.keras={output.best:q} best.weights.h5={output.best_weights:q} 2>> {log:q}"


rule merge_metrics:
    """One metrics table for the whole run, across all segments and attempts."""
    input:
        segments=all_segments,
    output:
        Files.metrics,
    log:
        "logs/merge_metrics/{run}.log",
    params:
        segments=segment_count,
    shell:
        '"${{SEGTRAIN_IMAGE_PYTHON:-$SEGTRAIN_PYTHON}}" "$SEGTRAIN_SCRIPTS"/merge_metrics.py '
        "--output {output:q} --first-segment {input.segments[0]:q} --count {params.segments} 2>> {log:q}"
