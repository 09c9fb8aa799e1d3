"""Rotating held-out samples: ``pastflow folds`` runs the workflow once per fold (one sample
tested, the next one validating, the others training) and tabulates every fold's scores.

- ``plan.py``: the folds of a sheet and each fold's sheet;
- ``table.py``: one table of every fold's methods, baselines and paired differences;
- ``cli.py``: the command, which runs Snakemake per fold in a directory of its own.
"""
