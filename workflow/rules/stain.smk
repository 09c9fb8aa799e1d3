# Virtual IHC (pastflow.stain): cut-offs calibrated on the training slides (measured
# expression for measured H-scores, the model's predictions of the same cells for virtual
# ones), then per sample H-scores, then virtual stain images from predicted expression,
# then predicted against measured H-scores on the held-out slides. Settings (markers drawn,
# region grid, ...) travel in the stain settings file, never on the shell line.
STAIN_PANEL = project_file(SETTINGS.stain.panel)


# Cohort level: 0/1+/2+/3+ cut-offs per marker (panel cut-offs win over calibration).
rule stain_calibrate:
    input:
        tables=expand("results/qc/{sample}.h5ad", sample=PRETRAIN_SAMPLES),
        predictions=expand("results/predict/{sample}.h5ad", sample=PRETRAIN_SAMPLES),
        panel=STAIN_PANEL,
        settings=settings_file("stain"),
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
    benchmark:
        "results/benchmarks/stain_calibrate.tsv"
    conda:
        "../../envs/stain.yaml"
    resources:
        **rule_resources("stain_calibrate"),
    params:
        pastflow=PASTFLOW,
    shell:
        "{params.pastflow} stain-calibrate --tables {input.tables:q}"
        " --predictions {input.predictions:q} --panel {input.panel:q}"
        " --settings {input.settings:q} --out {output:q} > {log:q} 2>&1"


# Per sample, every sample: levels and H-scores from predicted expression (and from measured
# expression where there is some). Survival reads these without waiting for the images.
rule stain:
    input:
        prediction="results/predict/{sample}.h5ad",
        store="results/patches/{sample}.h5",
        cutoffs="results/stain/cutoffs.tsv",
        panel=STAIN_PANEL,
        table=qc_table,
        cores=core_map_input,
        settings=settings_file("stain"),
    output:
        hscores="results/stain/{sample}/hscores.tsv",
        cells="results/stain/{sample}/cells.tsv.gz",
    log:
        "results/logs/stain/{sample}.log",
    benchmark:
        "results/benchmarks/stain/{sample}.tsv"
    conda:
        "../../envs/stain.yaml"
    resources:
        **rule_resources("stain"),
    params:
        pastflow=PASTFLOW,
        table=optional_table,
        cores=core_map_option,
        out_dir=lambda wildcards, output: Path(output.hscores).parent,
    shell:
        "{params.pastflow} stain --prediction {input.prediction:q} --store {input.store:q}"
        " --cutoffs {input.cutoffs:q} --panel {input.panel:q} {params.table} {params.cores}"
        " --settings {input.settings:q} --sample {wildcards.sample:q}"
        " --out-dir {params.out_dir:q} > {log:q} 2>&1"


# Per sample, every sample: virtual stain pyramids of the `stain.images` markers and their
# thumbnails, drawn from the levels `stain` wrote (the QC table gives the unit diameter).
rule stain_images:
    input:
        cells="results/stain/{sample}/cells.tsv.gz",
        hscores="results/stain/{sample}/hscores.tsv",
        store="results/patches/{sample}.h5",
        panel=STAIN_PANEL,
        table=qc_table,
        cores=core_map_input,
        settings=settings_file("stain"),
    output:
        images=expand(
            "results/stain/{{sample}}/virtual_{marker}.tif",
            marker=SETTINGS.stain.images,
        ),
        thumbnails=report(
            "results/stain/{sample}/thumbnails.jpg",
            caption="../report/stain_thumbnails.rst",
            category="4. Virtual IHC",
            subcategory="virtual stains",
            labels={"sample": "{sample}"},
        ),
    log:
        "results/logs/stain/{sample}_images.log",
    benchmark:
        "results/benchmarks/stain_images/{sample}.tsv"
    conda:
        "../../envs/stain.yaml"
    resources:
        **rule_resources("stain_images"),
    params:
        pastflow=PASTFLOW,
        table=optional_table,
        cores=core_map_option,
        out_dir=lambda wildcards, output: Path(output.thumbnails).parent,
    shell:
        "{params.pastflow} stain-images --cells {input.cells:q} --hscores {input.hscores:q}"
        " --store {input.store:q} --panel {input.panel:q} {params.table} {params.cores}"
        " --settings {input.settings:q} --sample {wildcards.sample:q}"
        " --out-dir {params.out_dir:q} > {log:q} 2>&1"


# Cohort level: the test samples with measured expression.
rule stain_agreement:
    input:
        hscores=expand("results/stain/{sample}/hscores.tsv", sample=EVALUATE_SAMPLES),
        settings=settings_file("stain"),
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
    benchmark:
        "results/benchmarks/stain_agreement.tsv"
    conda:
        "../../envs/stain.yaml"
    resources:
        **rule_resources("stain_agreement"),
    params:
        pastflow=PASTFLOW,
    shell:
        "{params.pastflow} stain-agreement --hscores {input.hscores:q}"
        " --settings {input.settings:q}"
        " --out {output.agreement:q} --details {output.details:q}"
        " --bland-altman {output.bland_altman:q} --scatter {output.scatter:q} > {log:q} 2>&1"
