"""Allen Mouse Brain Atlas ISH: query experiments, download 3-D expression grids, reorient, write, stack.

The modules, one stage each:

- :mod:`~abc_helpers.ish.api`: the Allen API's SectionDataSet queries (:func:`query_section_datasets`);
- :mod:`~abc_helpers.ish.grids`: grid zips: download and check them, read their volumes
  (:func:`download_grids`, :func:`read_grid`);
- :mod:`~abc_helpers.ish.volumes`: reorientation to RAS or PIR in MICe or CCFv3 world space, and
  writing and reading volumes in each format's convention (:func:`reorient`, :func:`write_volume`);
- :mod:`~abc_helpers.ish.stack`: many grids in one float16 stack, and the genes whose maps look
  alike (:func:`build_expression_stack`, :func:`correlated_genes`).
"""

from .api import SEED_COLUMNS, query_section_datasets, section_datasets_url
from .grids import (
    BAR_FORMAT,
    GRID_BYTES,
    GRID_SHAPE,
    GRID_SIZE,
    check_grid_zip,
    download_grid,
    download_grids,
    grid_url,
    read_grid,
    read_grid_array,
    verify_grid,
)
from .stack import (
    GENES_FILE,
    INDEX_FILE,
    STACK_FILE,
    STACK_INFO_FILE,
    build_correlation_index,
    build_expression_stack,
    coarse_index,
    correlated_genes,
    load_expression_stack,
)
from .volumes import (
    CENTERS_UM,
    DIRECTION_COSINES,
    VOLUME_FORMATS,
    convert_grid,
    expected_world_point,
    pir_to_ras,
    read_volume,
    reorient,
    world_geometry,
    world_plane,
    write_volume,
)

__all__ = [
    "BAR_FORMAT",
    "CENTERS_UM",
    "DIRECTION_COSINES",
    "GENES_FILE",
    "GRID_BYTES",
    "GRID_SHAPE",
    "GRID_SIZE",
    "INDEX_FILE",
    "SEED_COLUMNS",
    "STACK_FILE",
    "STACK_INFO_FILE",
    "VOLUME_FORMATS",
    "build_correlation_index",
    "build_expression_stack",
    "check_grid_zip",
    "coarse_index",
    "convert_grid",
    "correlated_genes",
    "download_grid",
    "download_grids",
    "expected_world_point",
    "grid_url",
    "load_expression_stack",
    "pir_to_ras",
    "query_section_datasets",
    "read_grid",
    "read_grid_array",
    "read_volume",
    "reorient",
    "section_datasets_url",
    "verify_grid",
    "world_geometry",
    "world_plane",
    "write_volume",
]
