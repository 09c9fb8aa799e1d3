"""``pastflow timings``: wall time and memory per workflow stage, from Snakemake's benchmark
files (every rule writes ``results/benchmarks/<rule>/<sample>.tsv`` or
``results/benchmarks/<rule>.tsv``)."""
