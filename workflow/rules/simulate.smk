# The default config's cohort: slides written in real vendor formats, with ground truth.
if SIMULATED:

    rule simulate_sample:
        input:
            settings=settings_file("simulate"),
        output:
            directory(f"{SIM_OUT}/{{sample}}"),
        log:
            "results/logs/simulate/{sample}.log",
        benchmark:
            "results/benchmarks/simulate_sample/{sample}.tsv"
        conda:
            "../../envs/simulate.yaml"
        resources:
            **rule_resources("simulate_sample"),
        params:
            pastflow=PASTFLOW,
            out=lambda wildcards, output: Path(output[0]).parent,
            row=sheet_values("patient", "technology"),
            # The section seed: the sample's row in the sheet.
            seed=lambda wildcards: SAMPLES.index(wildcards.sample),
            # A tissue-microarray row: its number of cores (its patient column names the block).
            cores=lambda wildcards: len(CORE_PATIENTS.get(wildcards.sample, [])),
        shell:
            "{params.pastflow} simulate sample --out {params.out:q} --sample {wildcards.sample:q}"
            " --patient {params.row[patient]:q} --technology {params.row[technology]:q}"
            " --seed {params.seed:q} --cores {params.cores:q} --settings {input.settings:q}"
            " > {log:q} 2>&1"

    rule simulate_clinical:
        input:
            settings=settings_file("simulate"),
        output:
            clinical=f"{SIM_OUT}/clinical.tsv",
            hazard=f"{SIM_OUT}/truth_hazard.tsv",
        log:
            "results/logs/simulate/clinical.log",
        benchmark:
            "results/benchmarks/simulate_clinical.tsv"
        conda:
            "../../envs/simulate.yaml"
        resources:
            **rule_resources("simulate_clinical"),
        params:
            pastflow=PASTFLOW,
            out=lambda wildcards, output: Path(output[0]).parent,
            patients=sorted(PATIENTS),
        shell:
            "{params.pastflow} simulate clinical --out {params.out:q} --patients {params.patients:q}"
            " --settings {input.settings:q} > {log:q} 2>&1"
