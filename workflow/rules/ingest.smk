rule ingest:
    input:
        data=ingest_inputs,
        settings=settings_file("ingest"),
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
        row=sheet_values("patient", "technology", "data", "image", "alignment", "mpp"),
    shell:
        "{params.pastflow} ingest --sample {wildcards.sample:q}"
        " --patient {params.row[patient]} --technology {params.row[technology]}"
        " --data {params.row[data]} --image {params.row[image]}"
        " --alignment {params.row[alignment]} --mpp {params.row[mpp]}"
        " --settings {input.settings}"
        " --out {output:q} > {log:q} 2>&1"
