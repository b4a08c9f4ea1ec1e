"""abc_helpers: thin, fast and reliable helpers for Allen Institute open data.

All public names are importable from here; please do not import from submodules, which may move.
The CCF coordinates and structures are one module of their own: ``from abc_helpers import ccf``;
so is the book's figure style (needs matplotlib, the ``book`` extra): ``from abc_helpers import plots``.
"""

from .cache import (
    AbcProjectCache,
    LargeDataSizeWarning,
    OutdatedManifestWarning,
    ReadOnlyLocalCacheWarning,
)
from .expression import MissingCellsWarning, extract_genes_from_h5ad, get_gene_data
from .gene_index import (
    build_gene_index,
    find_gene_index,
    gene_index_path,
    read_gene_index_info,
    served_indexes,
    write_catalog,
)
from .ish import (
    build_correlation_index,
    build_expression_stack,
    convert_grid,
    correlated_genes,
    download_grid,
    download_grids,
    load_expression_stack,
    query_section_datasets,
    read_grid,
    read_volume,
    reorient,
    world_plane,
    write_volume,
)
from .manifest import (
    DataTypeNotInDirectory,
    FileAttributes,
    Manifest,
    ManifestComparison,
    compare_manifests,
    format_size,
)
from .neuropixels import (
    VbnEcephysSession,
    VbnProjectCache,
    generate_all_download_urls_from_manifest,
    get_behavior_session_url,
    get_manifest_url,
    get_metadata_url,
)
from .rangefile import RangeFile
from .runinfo import run_information
from .session_stream import SessionFile, SessionResults, map_sessions
from .sources import Source, get_source
from .transfer import (
    DownloadError,
    DownloadJob,
    ObjectChanged,
    download,
    download_many,
    file_hash,
    list_objects,
    read_range,
    received_bytes,
)

#: The package version: the one place it is defined (pyproject.toml reads it from here).
__version__ = "0.1.0"

__all__ = [
    "AbcProjectCache",
    "DataTypeNotInDirectory",
    "DownloadError",
    "DownloadJob",
    "FileAttributes",
    "LargeDataSizeWarning",
    "Manifest",
    "ManifestComparison",
    "MissingCellsWarning",
    "ObjectChanged",
    "OutdatedManifestWarning",
    "RangeFile",
    "ReadOnlyLocalCacheWarning",
    "SessionFile",
    "SessionResults",
    "Source",
    "VbnEcephysSession",
    "VbnProjectCache",
    "build_correlation_index",
    "build_expression_stack",
    "build_gene_index",
    "compare_manifests",
    "convert_grid",
    "correlated_genes",
    "download",
    "download_grid",
    "download_grids",
    "download_many",
    "extract_genes_from_h5ad",
    "file_hash",
    "find_gene_index",
    "format_size",
    "gene_index_path",
    "generate_all_download_urls_from_manifest",
    "get_behavior_session_url",
    "get_gene_data",
    "get_manifest_url",
    "get_metadata_url",
    "get_source",
    "list_objects",
    "load_expression_stack",
    "map_sessions",
    "query_section_datasets",
    "read_gene_index_info",
    "read_grid",
    "read_range",
    "read_volume",
    "received_bytes",
    "reorient",
    "run_information",
    "served_indexes",
    "world_plane",
    "write_catalog",
    "write_volume",
]
