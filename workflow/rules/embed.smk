# Per sample, every sample (H&E-only ones included): image embeddings of every cell with the
# trained model and with the same architecture at random weights; expression embeddings
# where a QC table exists. The patch store must be at the model's resolution.
rule embed:
    input:
        weights=f"{MODEL}/model.safetensors",
        model_config=f"{MODEL}/config.json",
        store="results/patches/{sample}.h5",
        table=qc_table,
        settings=settings_file("embed"),
    output:
        "results/embed/{sample}.h5ad",
    log:
        "results/logs/embed/{sample}.log",
    benchmark:
        "results/benchmarks/embed/{sample}.tsv"
    conda:
        "../../envs/embed.yaml"
    threads: 4
    resources:
        **rule_resources("embed"),
    params:
        pastflow=PASTFLOW,
        model=lambda wildcards, input: Path(input.weights).parent,
        table=optional_table,
        row=sheet_values("split"),
    shell:
        "OMP_NUM_THREADS={threads:q} {params.pastflow} embed --model {params.model:q}"
        " --store {input.store:q} {params.table} --sample {wildcards.sample:q}"
        " --split {params.row[split]:q} --out {output:q}"
        " --settings {input.settings:q} > {log:q} 2>&1"
