"""The run's key numbers, gathered from every stage's outputs for the report's front page
(``results/summary.json``) and a table (``results/summary.tsv``)."""
