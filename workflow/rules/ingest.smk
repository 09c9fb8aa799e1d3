rule ingest:
    input:
        data=ingest_inputs,
        settings=settings_file("ingest"),
    output:
        directory("results/ingest/{sample}.zarr"),
    log:
        "results/logs/ingest/{sample}.log",
    benchmark:
        "results/benchmarks/ingest/{sample}.tsv"
    conda:
        "../../envs/ingest.yaml"
    resources:
        **rule_resources("ingest"),
    params:
        pastflow=PASTFLOW,
        row=sheet_values("patient", "technology", "data", "image", "alignment", "mpp"),
    shell:
        "{params.pastflow} ingest --sample {wildcards.sample:q}"
        " --patient {params.row[patient]:q} --technology {params.row[technology]:q}"
        " --data={params.row[data]:q} --image={params.row[image]:q}"
        " --alignment={params.row[alignment]:q} --mpp={params.row[mpp]:q}"
        " --settings {input.settings:q}"
        " --out {output:q} > {log:q} 2>&1"
