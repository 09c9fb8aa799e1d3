# Cohort level: one model from the train samples that have expression; the val samples are
# only its validation input (validation loss per checkpoint, the best one kept). Only the
# model files are declared, not the folder: checkpoints/ beside them survives a failed or
# pre-empted job (exit 75 on SIGTERM/SIGUSR1/SIGURG), the retry resumes from the newest one
# (with more wall time per attempt), and the model files are written last. With `gpu` >= 1
# (the slurm profile) the job starts one process per GPU through torchrun (DDP), by
# `python -m pastflow.launch`, which keeps the exit status 75 that torchrun would replace.
rule pretrain:
    input:
        stores=expand("results/patches/{sample}.h5", sample=PRETRAIN_SAMPLES),
        tables=expand("results/qc/{sample}.h5ad", sample=PRETRAIN_SAMPLES),
        val_stores=expand("results/patches/{sample}.h5", sample=VAL_SAMPLES),
        val_tables=expand("results/qc/{sample}.h5ad", sample=VAL_SAMPLES),
        settings=settings_file("pretrain"),
    output:
        weights=f"{MODEL}/model.safetensors",
        model_config=f"{MODEL}/config.json",
        metrics="results/pretrain/metrics.tsv",
        coverage="results/pretrain/pathway_coverage.tsv",
        curves=report(
            "results/pretrain/training_curves.png",
            caption="../report/training_curves.rst",
            category="3. Model",
            subcategory="pretraining",
            labels={"figure": "training curves"},
        ),
    log:
        "results/logs/pretrain/pretrain.log",
    benchmark:
        "results/benchmarks/pretrain.tsv"
    retries: 2
    conda:
        "../../envs/pretrain.yaml"
    threads: 8
    resources:
        **rule_resources("pretrain"),
    params:
        launch=pretrain_launcher,
        out=lambda wildcards, output: Path(output.metrics).parent,
        validation=validation_options,
    shell:
        "OMP_NUM_THREADS={threads:q} {params.launch} pretrain --settings {input.settings:q}"
        " --stores {input.stores:q} --tables {input.tables:q} {params.validation}"
        " --out {params.out:q} > {log:q} 2>&1"
