# Per sample: expression predicted from the H&E by the trained head.
rule predict:
    input:
        weights=f"{MODEL}/model.safetensors",
        model_config=f"{MODEL}/config.json",
        embedding="results/embed/{sample}.h5ad",
        table=qc_table,
        settings=settings_file("predict"),
    output:
        "results/predict/{sample}.h5ad",
    log:
        "results/logs/predict/{sample}.log",
    conda:
        "../../envs/predict.yaml"
    resources:
        **rule_resources("predict"),
    params:
        pastflow=PASTFLOW,
        model=lambda wildcards, input: Path(input.weights).parent,
        table=optional_table,
        row=sheet_values("split"),
    shell:
        "{params.pastflow} predict --model {params.model} --embedding {input.embedding}"
        " {params.table} --split {params.row[split]} --out {output}"
        " --settings {input.settings} > {log} 2>&1"


# Cohort level: the test samples with measured expression, against the baselines.
rule evaluate:
    input:
        test_embeddings=expand("results/embed/{sample}.h5ad", sample=EVALUATE_SAMPLES),
        test_tables=expand("results/qc/{sample}.h5ad", sample=EVALUATE_SAMPLES),
        predictions=expand("results/predict/{sample}.h5ad", sample=EVALUATE_SAMPLES),
        train_embeddings=expand("results/embed/{sample}.h5ad", sample=PRETRAIN_SAMPLES),
        train_tables=expand("results/qc/{sample}.h5ad", sample=PRETRAIN_SAMPLES),
        settings=settings_file("evaluate"),
    output:
        metrics=report(
            "results/predict/metrics.tsv",
            caption="../report/predict_metrics.rst",
            category="3. Model",
            subcategory="expression from H&E",
            labels={"table": "mean Pearson r per test sample and method"},
        ),
        per_gene="results/predict/per_gene.tsv",
        paired=report(
            "results/predict/paired.tsv",
            caption="../report/predict_paired.rst",
            category="3. Model",
            subcategory="expression from H&E",
            labels={"table": "pastflow minus baselines, paired 95% intervals"},
        ),
        figures=report(
            directory("results/predict/figures"),
            patterns=["{sample}/{figure}.png"],
            caption="../report/predict_figures.rst",
            category="3. Model",
            subcategory="expression from H&E",
            labels={"sample": "{sample}", "figure": "{figure}"},
        ),
    log:
        "results/logs/predict/evaluate.log",
    conda:
        "../../envs/predict.yaml"
    resources:
        **rule_resources("evaluate"),
    params:
        pastflow=PASTFLOW,
    shell:
        "{params.pastflow} evaluate --test-embeddings {input.test_embeddings}"
        " --test-tables {input.test_tables} --predictions {input.predictions}"
        " --train-embeddings {input.train_embeddings} --train-tables {input.train_tables}"
        " --metrics {output.metrics} --per-gene {output.per_gene} --paired {output.paired}"
        " --figures {output.figures} --settings {input.settings} --no-progress > {log} 2>&1"


# Cohort level: the probes and the mean baseline, each training patient held out in turn.
rule evaluate_lopo:
    input:
        weights=f"{MODEL}/model.safetensors",
        model_config=f"{MODEL}/config.json",
        train_embeddings=expand("results/embed/{sample}.h5ad", sample=PRETRAIN_SAMPLES),
        train_tables=expand("results/qc/{sample}.h5ad", sample=PRETRAIN_SAMPLES),
        settings=settings_file("evaluate"),
    output:
        report(
            "results/predict/lopo.tsv",
            caption="../report/predict_lopo.rst",
            category="3. Model",
            subcategory="expression from H&E",
            labels={"table": "leave one patient out (training samples)"},
        ),
    log:
        "results/logs/predict/evaluate_lopo.log",
    conda:
        "../../envs/predict.yaml"
    resources:
        **rule_resources("evaluate_lopo"),
    params:
        pastflow=PASTFLOW,
        model=lambda wildcards, input: Path(input.weights).parent,
    shell:
        "{params.pastflow} evaluate-lopo --model {params.model}"
        " --train-embeddings {input.train_embeddings} --train-tables {input.train_tables}"
        " --out {output} --settings {input.settings} > {log} 2>&1"
