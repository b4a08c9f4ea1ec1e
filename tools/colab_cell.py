"""The Colab install cell of the chapters: on Google Colab it installs abc_helpers, elsewhere nothing.

Colab opens a chapter from GitHub in a bare Python: without this, ``import abc_helpers`` fails with
``ModuleNotFoundError``. The code below this docstring is the cell, as pasted into each chapter (the
first code cell of its Imports section, right after the parameters, so it runs before any import;
``tests/book/test_notebook_skeleton.py`` checks each chapter has it verbatim);
``tests/publishing/test_binder_colab.py`` runs it both ways. The ``book`` extra
brings what the chapters import besides the package (anndata, matplotlib, nibabel; isal, optional).
"""

import sys

if "google.colab" in sys.modules:  # on Colab only: install the package from this repository
    import subprocess

    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet",
                    "abc_helpers[book] @ git+https://github.com/allen-open-data/abc_helpers@main"],
                   check=True)
