rule patches:
    input:
        "results/ingest/{sample}.zarr",
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
        mpp=config["patches"]["mpp"],
        patch_um=config["patches"]["patch_um"],
        context_um=config["patches"].get("context_um", 0),
    shell:
        "{params.pastflow} patches --table {input} --out {output.store} --gallery {output.gallery}"
        " --mpp {params.mpp} --patch-um {params.patch_um} --context-um {params.context_um}"
        " > {log} 2>&1"
