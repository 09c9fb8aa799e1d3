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
        row=lambda wildcards: samples.loc[wildcards.sample].to_dict(),
    shell:
        "{params.pastflow} ingest --sample {wildcards.sample:q}"
        " --patient {params.row[patient]:q} --technology {params.row[technology]:q}"
        " --data {params.row[data]:q} --image {params.row[image]:q}"
        " --alignment {params.row[alignment]:q} --settings {input.settings}"
        " --out {output:q} > {log:q} 2>&1"
