rule qc:
    input:
        "results/ingest/{sample}.zarr",
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
    conda:
        "../../envs/qc.yaml"
    resources:
        **rule_resources("qc"),
    params:
        pastflow=PASTFLOW,
        qc=config["qc"],
    shell:
        "{params.pastflow} qc --table {input} --out {output.table}"
        " --fig-distributions {output.distributions} --fig-spatial {output.spatial}"
        " --min-counts {params.qc[min_counts]} --min-genes {params.qc[min_genes]}"
        " --min-cells {params.qc[min_cells]} --n-top-genes {params.qc[n_top_genes]}"
        " > {log} 2>&1"
