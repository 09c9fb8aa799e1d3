"""``pastflow sheet --scan FOLDER``: a first sample sheet guessed from a folder of vendor outputs.

:mod:`pastflow.scan.detect` recognises each sample's layout (Xenium bundles, Space Ranger
``outs/`` of Visium and Visium HD, HEST-1k roots, legacy ST count tables, loose H&E slides)
and :mod:`pastflow.scan.cli` writes the sheet, leaving patient and split to the user.
"""
