"""pastflow: H&E + spatial transcriptomics -> morpho-molecular model and clinical readouts.

Each pipeline stage lives in its own subpackage and is callable without Snakemake,
both from Python and as ``pastflow <stage>`` on the command line.
"""

__version__ = "0.1.0"
