"""Serve gene indexes from the sample world, as a workshop mirror filled with ``--gene-index`` does.

For every expression matrix of every sample release, the gene index
(:func:`abc_helpers.gene_index.write_gene_index`), its sidecar files and each release's catalog
(:mod:`abc_helpers.gene_index.catalog`) are put in the sample ABC bucket at the keys a mirror uses,
so that ``get_gene_data`` on ``source="sample"`` reads genes over loopback HTTP without
downloading matrices. Built from the synthetic matrices: synthetic too.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ..gene_index import (
    SIDECARS,
    catalog_entry,
    catalog_key,
    catalog_text,
    gene_index_path,
    sidecar_path,
)
from ..gene_index.writer import write_gene_index
from ..manifest import Manifest
from ..sources import ABC_BUCKET
from .world import WorldWriter

LOGGER = logging.getLogger("abc_helpers")


def generate(writer: WorldWriter) -> None:
    """Index every sample expression matrix and put the indexes, sidecars and catalogs in *writer*.

    Parameters
    ----------
    writer : WorldWriter
        A world in which the ``abc`` generator has run.
    """
    scratch = writer.root / "tmp" / "gene-index"
    releases = sorted((writer.root / "s3" / ABC_BUCKET / "releases").glob("*/manifest.json"))
    done: dict[str, dict] = {}  # matrix key -> catalog entry without directory/file_name
    for manifest_path in releases:
        manifest = Manifest(json.loads(manifest_path.read_text()),
                            name=manifest_path.relative_to(writer.object_path(ABC_BUCKET, "")).as_posix())
        entries = []
        for attrs in manifest.files(kinds=("expression_matrices",)):
            if attrs.relative_path not in done:
                source = writer.object_path(ABC_BUCKET, attrs.relative_path)
                index_key = gene_index_path(Path(attrs.relative_path)).as_posix()
                index = scratch / index_key
                index.parent.mkdir(parents=True, exist_ok=True)
                write_gene_index(source, index, source_md5=attrs.file_hash,
                                 source_file=attrs.relative_path, progressbar=False)
                entry = catalog_entry(attrs, index, index_key)
                for path, key in [(index, index_key)] + [
                        (sidecar_path(index, k), sidecar_path(index_key, k)) for k in SIDECARS]:
                    writer.put_file(ABC_BUCKET, str(key), Path(path), move=True)
                done[attrs.relative_path] = entry
            entries.append(done[attrs.relative_path] | {"directory": attrs.directory,
                                                        "file_name": attrs.name})
        writer.put_bytes(ABC_BUCKET, catalog_key(manifest.version),
                         catalog_text(manifest.version, manifest.name, entries).encode())
    LOGGER.info("Sample gene indexes: %d matrices indexed for %d releases (synthetic)", len(done),
                len(releases))
