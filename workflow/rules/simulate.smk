# The default config's cohort: slides written in real vendor formats, with ground truth.
if SIMULATED:

    rule simulate_sample:
        output:
            directory(f"{SIM_OUT}/{{sample}}"),
        log:
            "results/logs/simulate/{sample}.log",
        conda:
            "../../envs/simulate.yaml"
        resources:
            **rule_resources("simulate_sample"),
        params:
            pastflow=PASTFLOW,
            out=lambda wildcards, output: Path(output[0]).parent,
            patient=sheet("patient"),
            technology=sheet("technology"),
            seed=lambda wildcards: SAMPLES.index(wildcards.sample),
            n_cells=simulated_cells,
            n_genes=config["simulate"]["n_genes"],
            mpp=config["simulate"]["mpp"],
            cohort_seed=config["simulate"]["cohort_seed"],
        shell:
            "{params.pastflow} simulate sample --out {params.out} --sample {wildcards.sample}"
            " --patient {params.patient} --technology {params.technology}"
            " --n-cells {params.n_cells} --n-genes {params.n_genes} --mpp {params.mpp}"
            " --seed {params.seed} --cohort-seed {params.cohort_seed} > {log} 2>&1"

    rule simulate_clinical:
        output:
            clinical=f"{SIM_OUT}/clinical.tsv",
            hazard=f"{SIM_OUT}/truth_hazard.tsv",
        log:
            "results/logs/simulate/clinical.log",
        conda:
            "../../envs/simulate.yaml"
        resources:
            **rule_resources("simulate_clinical"),
        params:
            pastflow=PASTFLOW,
            out=lambda wildcards, output: Path(output[0]).parent,
            patients=sorted(set(samples["patient"])),
            cohort_seed=config["simulate"]["cohort_seed"],
        shell:
            "{params.pastflow} simulate clinical --out {params.out} --patients {params.patients}"
            " --cohort-seed {params.cohort_seed} > {log} 2>&1"
