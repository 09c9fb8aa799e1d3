rule patches:
    input:
        ingested="results/ingest/{sample}.zarr",
        settings=settings_file("patches"),
    output:
        store="results/patches/{sample}.h5",
        gallery=report(
            "results/patches/{sample}_gallery.png",
            caption="../report/patch_gallery.rst",
            category="2. Cell patches",
            subcategory="{sample}",
            labels={"sample": "{sample}", "figure": "patch gallery"},
        ),
    log:
        "results/logs/patches/{sample}.log",
    benchmark:
        "results/benchmarks/patches/{sample}.tsv"
    conda:
        "../../envs/patches.yaml"
    resources:
        **rule_resources("patches"),
    params:
        pastflow=PASTFLOW,
    shell:
        "{params.pastflow} patches --ingested {input.ingested:q} --settings {input.settings:q}"
        " --out {output.store:q} --gallery {output.gallery:q} > {log:q} 2>&1"
