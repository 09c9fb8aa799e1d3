# Cohort level: the run's key numbers from every stage that ran, for the report's front page
# (the Snakefile loads results/summary.json into the report's template when it exists).
# Expression metrics per test sample (with its technology) and per technology; never a mean
# across technologies.
rule summary:
    input:
        unpack(summary_inputs),
        outcomes=f"{SURVIVAL}/outcomes.tsv" if RUN_SURVIVAL else [],
    output:
        json=SUMMARY,
        tsv=report(
            "results/summary.tsv",
            caption="../report/summary.rst",
            category="0. Summary",
            labels={"table": "key numbers of the run"},
        ),
    log:
        "results/logs/summary.log",
    conda:
        "../../envs/predict.yaml"
    resources:
        **rule_resources("summary"),
    params:
        pastflow=PASTFLOW,
        samples=SAMPLES,
        technologies=[samples.loc[s, "technology"] for s in SAMPLES],
        optional=lambda wildcards, input: " ".join(
            f"--{key} {input[key]}"
            for key in ("metrics", "cindex", "outcomes", "agreement")
            if key in input.keys() and input[key]
        ),
    shell:
        "{params.pastflow} summary --samples {params.samples}"
        " --technologies {params.technologies}"
        " --stores {input.stores} {params.optional}"
        " --json {output.json} --tsv {output.tsv} > {log} 2>&1"
