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
    benchmark:
        "results/benchmarks/predict/{sample}.tsv"
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
        "{params.pastflow} predict --model {params.model:q} --embedding {input.embedding:q}"
        " {params.table} --split {params.row[split]:q} --out {output:q}"
        " --settings {input.settings:q} > {log:q} 2>&1"


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
    benchmark:
        "results/benchmarks/evaluate.tsv"
    conda:
        "../../envs/predict.yaml"
    resources:
        **rule_resources("evaluate"),
    params:
        pastflow=PASTFLOW,
    shell:
        "{params.pastflow} evaluate --test-embeddings {input.test_embeddings:q}"
        " --test-tables {input.test_tables:q} --predictions {input.predictions:q}"
        " --train-embeddings {input.train_embeddings:q}"
        " --train-tables {input.train_tables:q} --metrics {output.metrics:q}"
        " --per-gene {output.per_gene:q} --paired {output.paired:q}"
        " --figures {output.figures:q} --settings {input.settings:q}"
        " > {log:q} 2>&1"


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
    benchmark:
        "results/benchmarks/evaluate_lopo.tsv"
    conda:
        "../../envs/predict.yaml"
    resources:
        **rule_resources("evaluate_lopo"),
    params:
        pastflow=PASTFLOW,
        model=lambda wildcards, input: Path(input.weights).parent,
    shell:
        "{params.pastflow} evaluate-lopo --model {params.model:q}"
        " --train-embeddings {input.train_embeddings:q}"
        " --train-tables {input.train_tables:q} --out {output:q}"
        " --settings {input.settings:q} > {log:q} 2>&1"
