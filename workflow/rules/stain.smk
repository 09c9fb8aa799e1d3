# Virtual IHC (pastflow.stain): cut-offs calibrated on the training slides' measured
# expression, then per sample H-scores and virtual stain images from predicted expression,
# then predicted against measured H-scores on the held-out slides.
STAIN_PANEL = project_file(config["stain"]["panel"])
STAIN_IMAGES = config["stain"]["images"]


# Cohort level: 0/1+/2+/3+ cut-offs per marker (panel cut-offs win over calibration).
rule stain_calibrate:
    input:
        tables=expand("results/qc/{sample}.h5ad", sample=PRETRAIN_SAMPLES),
        panel=STAIN_PANEL,
    output:
        report(
            "results/stain/cutoffs.tsv",
            caption="../report/stain_cutoffs.rst",
            category="4. Virtual IHC",
            subcategory="H-scores",
            labels={"table": "marker cut-offs"},
        ),
    log:
        "results/logs/stain/calibrate.log",
    conda:
        "../../envs/stain.yaml"
    resources:
        **rule_resources("stain_calibrate"),
    params:
        pastflow=PASTFLOW,
    shell:
        "{params.pastflow} stain-calibrate --tables {input.tables} --panel {input.panel}"
        " --out {output} --no-progress > {log} 2>&1"


# Per sample, every sample: levels and H-scores from predicted expression (and from measured
# expression where there is some), virtual stain pyramids and their thumbnails.
rule stain:
    input:
        prediction="results/predict/{sample}.h5ad",
        store="results/patches/{sample}.h5",
        cutoffs="results/stain/cutoffs.tsv",
        panel=STAIN_PANEL,
        table=qc_table,
    output:
        hscores="results/stain/{sample}/hscores.tsv",
        cells="results/stain/{sample}/cells.tsv.gz",
        images=expand(
            "results/stain/{{sample}}/virtual_{marker}.tif", marker=STAIN_IMAGES
        ),
        thumbnails=report(
            "results/stain/{sample}/thumbnails.jpg",
            caption="../report/stain_thumbnails.rst",
            category="4. Virtual IHC",
            subcategory="virtual stains",
            labels={"sample": "{sample}"},
        ),
    log:
        "results/logs/stain/{sample}.log",
    conda:
        "../../envs/stain.yaml"
    resources:
        **rule_resources("stain"),
    params:
        pastflow=PASTFLOW,
        table=optional_table,
        out_dir=lambda wildcards, output: Path(output.hscores).parent,
        images=" ".join(f"'{marker}'" for marker in STAIN_IMAGES),
        grid_um=config["stain"]["grid_um"],
        min_region_cells=config["stain"]["min_region_cells"],
    shell:
        "{params.pastflow} stain --prediction {input.prediction} --store {input.store}"
        " --cutoffs {input.cutoffs} --panel {input.panel} {params.table}"
        " --images {params.images} --grid-um {params.grid_um}"
        " --min-region-cells {params.min_region_cells} --sample {wildcards.sample}"
        " --out-dir {params.out_dir} --no-progress > {log} 2>&1"


# Cohort level: the test samples with measured expression.
rule stain_agreement:
    input:
        expand("results/stain/{sample}/hscores.tsv", sample=EVALUATE_SAMPLES),
    output:
        agreement=report(
            "results/stain/hscore_agreement.tsv",
            caption="../report/stain_agreement.rst",
            category="4. Virtual IHC",
            subcategory="H-scores",
            labels={"table": "predicted vs measured H-score"},
        ),
        details="results/stain/hscore_agreement_details.tsv",
        bland_altman=report(
            "results/stain/bland_altman.png",
            caption="../report/stain_bland_altman.rst",
            category="4. Virtual IHC",
            subcategory="H-scores",
            labels={"figure": "Bland-Altman"},
        ),
        scatter=report(
            "results/stain/hscore_scatter.png",
            caption="../report/stain_scatter.rst",
            category="4. Virtual IHC",
            subcategory="H-scores",
            labels={"figure": "predicted vs measured"},
        ),
    log:
        "results/logs/stain/agreement.log",
    conda:
        "../../envs/stain.yaml"
    resources:
        **rule_resources("stain_agreement"),
    params:
        pastflow=PASTFLOW,
    shell:
        "{params.pastflow} stain-agreement --hscores {input} --out {output.agreement}"
        " --details {output.details} --bland-altman {output.bland_altman}"
        " --scatter {output.scatter} > {log} 2>&1"
