"""Benchmark: how much memory chapter 5 (``book/linking_atlases.ipynb``) needs, on the sample and at
the real data's sizes.

The chapter's Prerequisites quote these figures, so they come from here rather than from a guess.
Each part runs in a fresh Python process, whose peak resident memory (``VmHWM``) is the figure:

* ``sample``: the chapter's code cells, executed in order with their default parameters
  (``data_source = "sample"``, matplotlib's Agg backend): the peak of the whole chapter;
* ``annotation``: the real CCF annotation's size, 1320 x 800 x 1140 voxels of ``uint32`` at 10 µm,
  read as the chapter reads it (``SimpleITK.ReadImage`` of a ``.nii.gz``, then ``ccf.image_to_array``).
  The file is the sample's 100 µm brain with each voxel repeated 10 times along each axis, written
  with nibabel: the real volume's shape, type and layout, not its content (which does not change
  what reading it holds in memory);
* ``tables``: the 10x ``cell_metadata`` and the two MERFISH tables at the real files' sizes in bytes
  (the 20231215 manifest), made by repeating the sample's rows (with new cell labels), read with the
  chapter's ``usecols``: the memory of the frames (``memory_usage(deep=True)``) and the process peak.
  The sample's rows have the real columns but not always the real strings' lengths, so these are
  estimates of the real frames, not measurements of them.

The real chapter's peak is then estimated as the larger of two moments: reading the annotation
(its process peak), and later, the annotation's array held together with the three tables (each
table's peak less its process's memory before reading it; the chapter keeps all of them until it
ends). The VBN tables (160 MB on disk) and the 10x matrices (read in blocks, see
``bench/gene_extraction.py``) are left out of the estimate. Prints one JSON line last; ``--save`` writes
``bench/results/linking_memory.json``. Needs about 15 GB of free memory and 2 GB of disk.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from _measure import add_save_arguments, save_result

ROOT = Path(__file__).resolve().parent.parent
CHAPTER = ROOT / "book" / "linking_atlases.ipynb"
REAL_SHAPE = (1320, 800, 1140)  # [AP, DV, LR] at 10 µm
#: (directory, file, the chapter's usecols) of the ABC tables the chapter reads
TABLES = [
    ("WMB-10X", "cell_metadata", ["cell_label", "dataset_label", "feature_matrix_label",
                                  "region_of_interest_acronym"]),
    ("MERFISH-C57BL6J-638850", "cell_metadata_with_cluster_annotation", ["cell_label", "class", "class_color"]),
    ("MERFISH-C57BL6J-638850-CCF", "ccf_coordinates", ["cell_label", "x", "y", "z"]),
]

PEAK = """
from pathlib import Path
def peak_mb():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
"""

SAMPLE = PEAK + """
import json, sys, nbformat, matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
plt.show = lambda *a, **k: plt.close("all")
nb = nbformat.read(sys.argv[1], as_version=4)
namespace = {}
for cell in nb.cells:
    if cell.cell_type == "code" and "google.colab" not in cell.source:
        exec(compile(cell.source, "<chapter 5>", "exec"), namespace)
print(json.dumps({"peak_mb": peak_mb()}))
"""

WRITE_ANNOTATION = """
import sys, tempfile
import nibabel, numpy as np
from abc_helpers import AbcProjectCache
import SimpleITK as sitk
from abc_helpers import ccf
abc = AbcProjectCache.from_s3_cache(tempfile.mkdtemp(), source="sample", progressbar=False)
small, _ = ccf.image_to_array(sitk.ReadImage(str(abc.get_data_path("Allen-CCF-2020", "annotation_10"))))
big = np.repeat(np.repeat(np.repeat(np.asarray(small, dtype=np.uint32), 10, 0), 10, 1), 10, 2)
assert big.shape == tuple(int(v) for v in sys.argv[2].split(",")), big.shape
image = nibabel.Nifti1Image(big, np.diag([0.01, 0.01, 0.01, 1.0]))
image.set_data_dtype(np.uint32)
nibabel.save(image, sys.argv[1])
"""

READ_ANNOTATION = PEAK + """
import json, sys
import SimpleITK as sitk
from abc_helpers import ccf
before = peak_mb()
annotation, resolution_um = ccf.image_to_array(sitk.ReadImage(sys.argv[1]))
print(json.dumps({"peak_mb": peak_mb(), "imports_mb": before, "shape": list(annotation.shape),
                  "array_mb": annotation.nbytes / 2**20}))
"""

TABLE = PEAK + """
import json, sys
import pandas as pd
path, usecols = sys.argv[1], sys.argv[2].split(",")
before = peak_mb()
frame = pd.read_csv(path, index_col="cell_label", usecols=usecols)
print(json.dumps({"peak_mb": peak_mb(), "imports_mb": before, "rows": len(frame),
                  "frame_mb": frame.memory_usage(deep=True, index=True).sum() / 2**20}))
"""


def run(script: str, *args: str) -> dict:
    """Run *script* in a fresh Python and return the JSON of its last line."""
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True,
                          check=False, cwd=ROOT)
    if done.returncode:
        msg = f"benchmark part failed ({args}): {done.stderr[-3000:]}"
        raise RuntimeError(msg)
    return json.loads(done.stdout.strip().splitlines()[-1]) if done.stdout.strip() else {}


def real_size_table(directory: str, file_name: str, out: Path) -> tuple[Path, int]:
    """The sample's table, its rows repeated (new cell labels) up to the real file's bytes."""
    from abc_helpers import AbcProjectCache
    from abc_helpers.manifest import Manifest

    real = Manifest.from_file(ROOT / "tests" / "data" / "abc_manifest_20231215.json")
    target = real.get_file_attributes(directory, file_name).size
    abc = AbcProjectCache.from_s3_cache(out / "abc", source="sample", progressbar=False)
    lines = abc.get_metadata_path(directory, file_name).read_text().splitlines()
    header, rows = lines[0], lines[1:]
    label = header.split(",").index("cell_label")
    path = out / f"{file_name}.csv"
    written, n = 0, 0
    with path.open("w") as f:
        f.write(header + "\n")
        while written < target:
            for row in rows:
                fields = row.split(",")
                fields[label] = f"{fields[label]}-{n // len(rows)}"
                line = ",".join(fields) + "\n"
                f.write(line)
                written += len(line)
                n += 1
                if written >= target:
                    break
    return path, n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_save_arguments(parser)
    args = parser.parse_args()
    summary: dict = {"sample_peak_mb": round(run(SAMPLE, str(CHAPTER))["peak_mb"])}
    print(f"  chapter 5 on the sample: {summary['sample_peak_mb']} MB", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="bench-linking-") as folder:
        work = Path(folder)
        volume = work / "annotation_10.nii.gz"
        run(WRITE_ANNOTATION, str(volume), ",".join(map(str, REAL_SHAPE)))
        read = run(READ_ANNOTATION, str(volume))
        volume.unlink()
        summary.update({"annotation_shape": read["shape"], "annotation_array_gb": round(read["array_mb"] / 1024, 2),
                        "annotation_peak_gb": round(read["peak_mb"] / 1024, 2),
                        "annotation_imports_mb": round(read["imports_mb"])})
        print(f"  annotation at 10 µm: {summary['annotation_peak_gb']} GB peak", file=sys.stderr)
        frames, held = 0.0, 0.0
        for directory, file_name, usecols in TABLES:
            path, rows = real_size_table(directory, file_name, work)
            table = run(TABLE, str(path), ",".join(usecols))
            path.unlink()
            frames += table["frame_mb"]
            held += table["peak_mb"] - table["imports_mb"]
            summary[f"{file_name}_rows"] = rows
            summary[f"{file_name}_frame_mb"] = round(table["frame_mb"])
            summary[f"{file_name}_peak_mb"] = round(table["peak_mb"])
            print(f"  {file_name}: {rows} rows, frame {table['frame_mb']:.0f} MB, peak {table['peak_mb']:.0f} MB",
                  file=sys.stderr)
    summary["tables_frame_gb"] = round(frames / 1024, 2)
    summary["tables_held_gb"] = round(held / 1024, 2)
    later = (read["imports_mb"] + read["array_mb"] + held) / 1024
    summary["real_estimate_gb"] = round(max(summary["annotation_peak_gb"], later), 1)
    if args.save:
        print(f"saved to {save_result('linking_memory', summary, False, args.note)}", file=sys.stderr)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
