rule qc:
    input:
        ingested="results/ingest/{sample}.zarr",
        settings=settings_file("qc"),
    output:
        table="results/qc/{sample}.h5ad",
        distributions=report(
            "results/qc/{sample}_distributions.png",
            caption="../report/qc_distributions.rst",
            category="1. QC",
            subcategory="{sample}",
            labels={"sample": "{sample}", "figure": "counts and genes per cell"},
        ),
        spatial=report(
            "results/qc/{sample}_spatial.png",
            caption="../report/qc_spatial.rst",
            category="1. QC",
            subcategory="{sample}",
            labels={"sample": "{sample}", "figure": "counts over the H&E"},
        ),
    log:
        "results/logs/qc/{sample}.log",
    benchmark:
        "results/benchmarks/qc/{sample}.tsv"
    conda:
        "../../envs/qc.yaml"
    resources:
        **rule_resources("qc"),
    params:
        pastflow=PASTFLOW,
    shell:
        "{params.pastflow} qc --ingested {input.ingested:q} --settings {input.settings:q}"
        " --out {output.table:q} --fig-distributions {output.distributions:q}"
        " --fig-spatial {output.spatial:q} > {log:q} 2>&1"
