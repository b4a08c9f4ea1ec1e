"""Gene indexes: gene-major (CSC) copies of 10x h5ad matrices, for fast repeated gene queries.

The ABC Atlas matrices are stored cell-major (CSR): all the values of one cell are contiguous, so
reading one gene means scanning the whole file. A gene index is the same matrix converted once to
CSC, written as an ordinary h5ad file that anndata opens (``anndata.read_h5ad(path, backed="r")``)
and in which each gene is one contiguous slice. It sits next to its source in the cache::

    <cache_dir>/expression_matrices/WMB-10Xv2/20230630/WMB-10Xv2-TH-log2.h5ad
    <cache_dir>/expression_matrices/WMB-10Xv2/20230630/WMB-10Xv2-TH-log2.gene_index.h5ad

and records the md5 of its source, so it is used only for the file it was built from. It also
stores the cell labels in a form that loads in milliseconds (fixed-width bytes, with their 64-bit
hashes sorted), so that a query matches 200,000 labels without decoding 200,000 strings. The
conversion is out of core: sorted runs of row blocks go to a scratch file, then column bands are
merged from the runs, so memory stays bounded (about 16 bytes per value of one run) whatever the
size of the matrix. It needs free disk space of about twice the matrix's ``X`` while it runs.

The modules:

- :mod:`~abc_helpers.gene_index.reader`: the format, the provenance and the lookups (cells to
  rows, genes to columns, a gene's slice), on plain arrays or through an open file;
- :mod:`~abc_helpers.gene_index.writer`: the out-of-core conversion, :func:`write_gene_index`;
- :mod:`~abc_helpers.gene_index.matrices`: the indexes of a release's matrices, through an
  :class:`~abc_helpers.AbcProjectCache` (:func:`build_gene_index`, :func:`find_gene_index`);
- :mod:`~abc_helpers.gene_index.catalog`: serving indexes (sidecar files and a catalog per
  release, so a client can read a gene's byte ranges without parsing HDF5);
- :mod:`~abc_helpers.gene_index.remote`: reading a served index over HTTP.
"""

from .catalog import (
    CATALOG_FORMAT,
    CATALOG_PREFIX,
    GENE_TABLE_DTYPE,
    SIDECARS,
    catalog_entry,
    catalog_key,
    catalog_text,
    describe_gene_index,
    identifiers_sha256,
    sidecar_path,
    write_catalog,
)
from .matrices import build_gene_index, data_files, find_gene_index
from .reader import (
    FORMAT,
    INFO_GROUP,
    LABEL_CACHE_SIZE,
    LABEL_HASHES,
    LABEL_KEYS,
    LABEL_ORDER,
    LABELS_BLOB,
    IndexTables,
    NoFastPath,
    column_slices,
    gene_index_path,
    index_tables,
    label_hashes,
    label_keys,
    line_numbers,
    match_label_keys,
    read_gene_index_info,
    read_obs_labels,
    read_var_column,
    var_positions,
    var_text_key,
)
from .remote import (
    ServedIndex,
    forget_served_indexes,
    load_catalog,
    read_served_genes,
    remote_extract_task,
    served_indexes,
)
from .writer import DEFAULT_RUN_NNZ, write_gene_index

__all__ = [
    "CATALOG_FORMAT",
    "CATALOG_PREFIX",
    "DEFAULT_RUN_NNZ",
    "FORMAT",
    "GENE_TABLE_DTYPE",
    "INFO_GROUP",
    "LABELS_BLOB",
    "LABEL_CACHE_SIZE",
    "LABEL_HASHES",
    "LABEL_KEYS",
    "LABEL_ORDER",
    "SIDECARS",
    "IndexTables",
    "NoFastPath",
    "ServedIndex",
    "build_gene_index",
    "catalog_entry",
    "catalog_key",
    "catalog_text",
    "column_slices",
    "data_files",
    "describe_gene_index",
    "find_gene_index",
    "forget_served_indexes",
    "gene_index_path",
    "identifiers_sha256",
    "index_tables",
    "label_hashes",
    "label_keys",
    "line_numbers",
    "load_catalog",
    "match_label_keys",
    "read_gene_index_info",
    "read_obs_labels",
    "read_served_genes",
    "read_var_column",
    "remote_extract_task",
    "served_indexes",
    "sidecar_path",
    "var_positions",
    "var_text_key",
    "write_catalog",
    "write_gene_index",
]
