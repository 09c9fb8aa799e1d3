# Cohort level: the run's key numbers from every stage that ran, for the report's front page
# (the Snakefile loads results/summary.json into the report's template when it exists).
# Expression metrics per test sample (with its technology) and per technology; never a mean
# across technologies.
rule summary:
    input:
        unpack(summary_inputs),
        outcomes=f"{SURVIVAL}/outcomes.tsv" if RUN_SURVIVAL else [],
        notes=NOTES_FILE,  # stages the run skipped (written at start-up)
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
    benchmark:
        "results/benchmarks/summary.tsv"
    conda:
        "../../envs/predict.yaml"
    resources:
        **rule_resources("summary"),
    params:
        pastflow=PASTFLOW,
        samples=SAMPLES,
        technologies=[samples.loc[s, "technology"] for s in SAMPLES],
        optional=lambda wildcards, input: options(
            (f"--{key}", input[key])
            for key in (
                "metrics",
                "paired",
                "cindex",
                "outcomes",
                "agreement",
                "notes",
            )
            if key in input.keys()
        ),
    shell:
        "{params.pastflow} summary --samples {params.samples:q}"
        " --technologies {params.technologies:q}"
        " --stores {input.stores:q} {params.optional}"
        " --json {output.json:q} --tsv {output.tsv:q} > {log:q} 2>&1"
