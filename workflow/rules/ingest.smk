rule ingest:
    input:
        ingest_inputs,
    output:
        directory("results/ingest/{sample}.zarr"),
    log:
        "results/logs/ingest/{sample}.log",
    conda:
        "../../envs/ingest.yaml"
    resources:
        **rule_resources("ingest"),
    params:
        pastflow=PASTFLOW,
        patient=sheet("patient"),
        technology=sheet("technology"),
        data=sheet("data"),
        image=sheet("image"),
        alignment=sheet("alignment"),
        mpp=(
            f"--mpp {config['ingest']['mpp']}"
            if config.get("ingest", {}).get("mpp")
            else ""
        ),
    shell:
        "{params.pastflow} ingest --sample {wildcards.sample} --patient {params.patient}"
        " --technology {params.technology} --data '{params.data}' --image '{params.image}'"
        " --alignment '{params.alignment}' {params.mpp} --out {output} > {log} 2>&1"
