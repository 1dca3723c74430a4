# Segmented training: measure checkpoint costs, plan segments, chain train-segment jobs, export.
#
# `snakemake --lint` asks for a conda environment or container per rule. No conda environments:
# every rule runs in the project's own environment (the Makefile's .venv, or the job image built
# from the Containerfile), because per-rule environments would install PyTorch/TensorFlow at run
# time, which GPU nodes without internet cannot do, and would split one framework build across
# rules. The job image is this workflow's container:
# `--software-deployment-method apptainer` (SLURM) runs every job in it, so a cluster runs
# exactly what was built and tested (config key container_image, refused when missing); without
# that flag the directive changes nothing.
from snakemake.utils import min_version

min_version("9.20")


configfile: "config/config.yaml"


container: config.get("container_image")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/measure.smk"
include: "workflow/rules/plan.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/export.smk"
include: "workflow/rules/report.smk"


# Cheap bookkeeping runs where Snakemake runs, not as cluster jobs.
localrules:
    all,
    models,
    plan_segments,
    merge_metrics,
    plot_run,
    compare_runs,


onstart:
    check_sources_shipped()
    check_nodes_executor()
    check_processes_fit()


rule all:
    default_target: True
    input:
        get_final_targets,


# `snakemake models`: train and export every run, without the figures and the comparison
# (`snakemake` makes them later from what is there).
rule models:
    input:
        get_model_targets,
