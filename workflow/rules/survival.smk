# Cohort level: patient features (clinical; image embeddings and their cluster composition;
# pathway scores of the predicted expression, virtual H-scores) -> penalised Cox models and
# attention-MIL, cross-validated by patient; c-index with 95% intervals, KM and forest plots.
rule survival:
    input:
        clinical=survival_clinical(),
        truth=f"{SIM_OUT}/truth_hazard.tsv" if SIMULATED else [],
        embeddings=expand("results/embed/{sample}.h5ad", sample=SAMPLES),
        predictions=expand("results/predict/{sample}.h5ad", sample=SAMPLES),
        hscores=survival_hscores,
    output:
        cindex=report(
            f"{SURVIVAL}/cindex.tsv",
            caption="../report/survival_cindex.rst",
            category="5. Survival",
            subcategory="models",
            labels={"table": "cross-validated c-index per model"},
        ),
        cindex_plot=report(
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
            labels={"figure": "forest plot of the combined model"},
        ),
        td_auc=report(
            f"{SURVIVAL}/td_auc.png",
            caption="../report/survival_td_auc.rst",
            category="5. Survival",
            subcategory="models",
            labels={"figure": "time-dependent AUC"},
        ),
        models=f"{SURVIVAL}/models.tsv",
        features=f"{SURVIVAL}/features.tsv",
        risk=f"{SURVIVAL}/risk.tsv",
        coefficients=f"{SURVIVAL}/coefficients.tsv",
        td_auc_table=f"{SURVIVAL}/td_auc.tsv",
    log:
        "results/logs/survival/survival.log",
    conda:
        "../../envs/survival.yaml"
    threads: 2
    resources:
        **rule_resources("survival"),
    params:
        pastflow=PASTFLOW,
        out=lambda wildcards, output: Path(output.cindex).parent,
        options=survival_options,
        sample_patients=" ".join(f"{s}={samples.loc[s, 'patient']}" for s in SAMPLES),
        folds=config["survival"]["folds"],
        repeats=config["survival"]["repeats"],
        inner_folds=config["survival"]["inner_folds"],
        penalizers=" ".join(str(p) for p in config["survival"]["penalizers"]),
        pca=config["survival"]["pca_components"],
        clusters=config["survival"]["clusters"],
        bootstrap=config["survival"]["bootstrap"],
        mil_epochs=config["survival"]["mil_epochs"],
        mil_cells=config["survival"]["mil_cells"],
        seed=config["survival"]["seed"],
    shell:
        "OMP_NUM_THREADS={threads} {params.pastflow} survival --clinical {input.clinical}"
        " --embeddings {input.embeddings} --predictions {input.predictions}"
        " --sample-patients {params.sample_patients} {params.options}"
        " --out-dir {params.out} --folds {params.folds} --repeats {params.repeats}"
        " --inner-folds {params.inner_folds} --penalizers {params.penalizers}"
        " --pca {params.pca} --clusters {params.clusters} --bootstrap {params.bootstrap}"
        " --mil-epochs {params.mil_epochs} --mil-cells {params.mil_cells}"
        " --seed {params.seed} --no-progress > {log} 2>&1"
