def ingest_inputs(wildcards):
    """The simulated sample folder, or the sheet's own files for real data."""
    if SIMULATED:
        return [f"{SIM_OUT}/{wildcards.sample}"]
    row = samples.loc[wildcards.sample]
    return [row[c] for c in ("data", "image", "alignment") if row[c]]


rule ingest:
    input:
        ingest_inputs,
    output:
        directory("results/ingest/{sample}.zarr"),
    log:
        "results/logs/ingest/{sample}.log",
    resources:
        mem_mb=4000,
        runtime=60,
    params:
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
        "pastflow ingest --sample {wildcards.sample} --patient {params.patient}"
        " --technology {params.technology} --data '{params.data}' --image '{params.image}'"
        " --alignment '{params.alignment}' {params.mpp} --out {output} > {log} 2>&1"
