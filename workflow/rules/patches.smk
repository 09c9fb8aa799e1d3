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
    conda:
        "../../envs/patches.yaml"
    resources:
        **rule_resources("patches"),
    params:
        pastflow=PASTFLOW,
    shell:
        "{params.pastflow} patches --ingested {input.ingested} --settings {input.settings}"
        " --out {output.store} --gallery {output.gallery} > {log} 2>&1"
