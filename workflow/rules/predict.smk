# Per sample: expression predicted from the H&E by the trained head.
rule predict:
    input:
        weights=f"{MODEL}/model.safetensors",
        model_config=f"{MODEL}/config.json",
        embedding="results/embed/{sample}.h5ad",
        table=qc_table,
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
        target_sum=(
            f"--target-sum {config['predict']['target_sum']}"
            if config["predict"].get("target_sum")
            else ""
        ),
    shell:
        "{params.pastflow} predict --model {params.model} --embedding {input.embedding}"
        " {params.table} {params.target_sum} --out {output} > {log} 2>&1"


# Cohort level: the test samples with measured expression, against the baselines.
rule evaluate:
    input:
        test_embeddings=expand("results/embed/{sample}.h5ad", sample=EVALUATE_SAMPLES),
        test_tables=expand("results/qc/{sample}.h5ad", sample=EVALUATE_SAMPLES),
        predictions=expand("results/predict/{sample}.h5ad", sample=EVALUATE_SAMPLES),
        train_embeddings=expand("results/embed/{sample}.h5ad", sample=PRETRAIN_SAMPLES),
        train_tables=expand("results/qc/{sample}.h5ad", sample=PRETRAIN_SAMPLES),
    output:
        metrics=report(
            "results/predict/metrics.tsv",
            caption="../report/predict_metrics.rst",
            category="3. Model",
            subcategory="expression from H&E",
            labels={"table": "mean Pearson r per test sample and method"},
        ),
        per_gene="results/predict/per_gene.tsv",
        lopo=report(
            "results/predict/lopo.tsv",
            caption="../report/predict_lopo.rst",
            category="3. Model",
            subcategory="expression from H&E",
            labels={"table": "leave one patient out (training samples)"},
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
        markers=config["evaluate"]["markers"],
        n_genes=config["evaluate"]["n_genes"],
        pca=config["evaluate"]["pca_components"],
        seed=config["evaluate"]["seed"],
        figure_samples=config["evaluate"]["figure_samples"],
    shell:
        "{params.pastflow} evaluate --test-embeddings {input.test_embeddings}"
        " --test-tables {input.test_tables} --predictions {input.predictions}"
        " --train-embeddings {input.train_embeddings} --train-tables {input.train_tables}"
        " --metrics {output.metrics} --per-gene {output.per_gene} --lopo {output.lopo}"
        " --figures {output.figures} --markers {params.markers} --n-genes {params.n_genes}"
        " --pca {params.pca} --seed {params.seed} --figure-samples {params.figure_samples}"
        " --no-progress > {log} 2>&1"
