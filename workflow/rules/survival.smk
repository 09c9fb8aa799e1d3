# Cohort level: patient features (clinical; image embeddings and their cluster composition;
# pathway scores of the predicted expression, virtual H-scores) -> penalised Cox models and
# attention-MIL, cross-validated by patient; c-index with 95% intervals, KM and forest plots.
# The sample sheet gives the patient of every slide.
rule survival_features:
    input:
        settings=settings_file("survival"),
        sheet=SHEET,
        clinical=survival_clinical(),
        embeddings=expand("results/embed/{sample}.h5ad", sample=SAMPLES),
        predictions=expand("results/predict/{sample}.h5ad", sample=SAMPLES),
        hscores=survival_hscores,
        gene_sets=survival_gene_sets(),
        cores=[
            f"{SIM_OUT}/{sample}" if SIMULATED else core_map(sample)
            for sample in TMA_SAMPLES
        ],
    output:
        features=f"{SURVIVAL}/features.tsv",
        outcomes=f"{SURVIVAL}/outcomes.tsv",
        cells=f"{SURVIVAL}/cells.npz",
    log:
        "results/logs/survival/survival_features.log",
    benchmark:
        "results/benchmarks/survival_features.tsv"
    conda:
        "../../envs/survival.yaml"
    threads: 2
    resources:
        **rule_resources("survival_features"),
    params:
        pastflow=PASTFLOW,
        out=lambda wildcards, output: Path(output.features).parent,
        # Each tissue-microarray sample's core map, as SAMPLE=PATH.
        cores=list_option("--cores", [f"{s}={core_map(s)}" for s in TMA_SAMPLES]),
    shell:
        "OMP_NUM_THREADS={threads:q} {params.pastflow} survival-features"
        " --settings {input.settings:q} --sheet {input.sheet:q}"
        " --clinical {input.clinical:q} --embeddings {input.embeddings:q}"
        " --predictions {input.predictions:q} --hscores {input.hscores:q}"
        " --gene-sets {input.gene_sets:q} {params.cores} --out-dir {params.out:q}"
        " > {log:q} 2>&1"


rule survival:
    input:
        settings=settings_file("survival"),
        features=rules.survival_features.output.features,
        outcomes=rules.survival_features.output.outcomes,
        cells=rules.survival_features.output.cells,
        truth=f"{SIM_OUT}/truth_hazard.tsv" if SIMULATED else [],
    output:
        cindex=report(
            f"{SURVIVAL}/cindex.tsv",
            caption="../report/survival_cindex.rst",
            category="5. Survival",
            subcategory="models",
            labels={"table": "cross-validated c-index per model"},
        ),
        models=f"{SURVIVAL}/models.tsv",
        risk=f"{SURVIVAL}/risk.tsv",
        coefficients=f"{SURVIVAL}/coefficients.tsv",
        td_auc=f"{SURVIVAL}/td_auc.tsv",
    log:
        "results/logs/survival/survival.log",
    benchmark:
        "results/benchmarks/survival.tsv"
    conda:
        "../../envs/survival.yaml"
    threads: 2
    resources:
        **rule_resources("survival"),
    params:
        pastflow=PASTFLOW,
        out=lambda wildcards, output: Path(output.cindex).parent,
        truth=survival_options,
    shell:
        "OMP_NUM_THREADS={threads:q} {params.pastflow} survival"
        " --settings {input.settings:q} --features {input.features:q}"
        " --outcomes {input.outcomes:q} --cells {input.cells:q} {params.truth}"
        " --out-dir {params.out:q} > {log:q} 2>&1"


rule survival_figures:
    input:
        cindex=rules.survival.output.cindex,
        models=rules.survival.output.models,
        risk=rules.survival.output.risk,
        coefficients=rules.survival.output.coefficients,
        td_auc=rules.survival.output.td_auc,
    output:
        cindex=report(
            f"{SURVIVAL}/cindex.png",
            caption="../report/survival_cindex.rst",
            category="5. Survival",
            subcategory="models",
            labels={"figure": "c-index with 95% interval"},
        ),
        km=report(
            f"{SURVIVAL}/km.png",
            caption="../report/survival_km.rst",
            category="5. Survival",
            subcategory="risk groups",
            labels={"figure": "Kaplan-Meier of predicted risk groups"},
        ),
        forest=report(
            f"{SURVIVAL}/forest.png",
            caption="../report/survival_forest.rst",
            category="5. Survival",
            subcategory="final model",
            labels={"figure": "forest plots: clinical baseline, combined model"},
        ),
        td_auc=report(
            f"{SURVIVAL}/td_auc.png",
            caption="../report/survival_td_auc.rst",
            category="5. Survival",
            subcategory="models",
            labels={"figure": "time-dependent AUC"},
        ),
    log:
        "results/logs/survival/survival_figures.log",
    benchmark:
        "results/benchmarks/survival_figures.tsv"
    conda:
        "../../envs/survival.yaml"
    resources:
        **rule_resources("survival_figures"),
    params:
        pastflow=PASTFLOW,
        out=lambda wildcards, output: Path(output.km).parent,
    shell:
        "{params.pastflow} survival-figures --cindex {input.cindex:q}"
        " --models {input.models:q} --risk {input.risk:q}"
        " --coefficients {input.coefficients:q} --td-auc {input.td_auc:q}"
        " --out-dir {params.out:q} > {log:q} 2>&1"
