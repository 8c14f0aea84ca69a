"""Fingerprint throughput: cases/s and MB/s of input read, per worker count, against plain reading.

    python bench/fingerprint.py            # 40 cases of about 128x256x256 (CT, 2.5x0.8x0.8 mm)
    python bench/fingerprint.py --quick    # 12 cases of about 64x128x128
    python bench/fingerprint.py --cases 20 --shape 96,192,192 --workers 1 2 4

Baseline in the same run: reading every image and label with SimpleITK and nothing else (one
process), so the ratio shows what the analysis (and, with workers, the process pool) adds to plain
I/O. MB/s counts the decoded voxels as stored (float32 image + uint8 label) and, in brackets, the
compressed bytes on disk. A spawn process pool costs about a second per worker to start (each imports
numpy and SimpleITK), which small --quick datasets do not pay back.

Recorded (2-core development machine shared with other jobs, load average ~7, so worker counts above 1
cannot show a speed-up there; rerun on an idle machine for scaling):
  default, 40 cases of ~128x256x256, 1683 MB decoded / 763 MB on disk:
    baseline   7.62 cases/s  321 MB/s decoded (145 MB/s compressed)
    1 worker   4.34 cases/s  183 MB/s decoded  (83 MB/s compressed)  1.76x the read-only time
    2 workers  3.03 cases/s  128 MB/s decoded  (58 MB/s compressed)  2.51x
  --quick, 12 cases of ~64x128x128, 65 MB decoded:
    baseline  26.2 cases/s; 1 worker 9.68 cases/s, 52 MB/s (2.70x); 2 workers 3.36 cases/s (7.79x: pool start-up)
Most of the gap to the baseline is the NIfTI decoder: autoseg reads NIfTI voxels with nibabel because
SimpleITK's NIfTI reader turns NaN into 0 (which `autoseg check` must see), and nibabel's gzip path is
about 1.4x slower than ITK's on these files (zlib itself is most of both).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from autoseg.dataset import load_dataset
from autoseg.demo import DemoSpec, make_demo_dataset
from autoseg.fingerprint import extract_fingerprint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="12 cases of 64x128x128")
    parser.add_argument("--cases", type=int, help="number of cases (default 40, --quick 12)")
    parser.add_argument("--shape", help="z,y,x voxels (default 128,256,256, --quick 64,128,128)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    cases, shape = (12, (64, 128, 128)) if args.quick else (40, (128, 256, 256))
    cases = args.cases or cases
    shape = tuple(int(v) for v in args.shape.split(",")) if args.shape else shape
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        root = make_demo_dataset(tmp, "Task950_Bench", DemoSpec(cases=cases, shape=shape, spacing=(2.5, 0.8, 0.8),
                                                               test_cases=0))
        print(f"generated {cases} cases of about {'x'.join(map(str, shape))} in {time.perf_counter() - started:.1f} s")
        dataset = load_dataset(root)
        on_disk_mb = sum(f.stat().st_size for f in Path(root).rglob("*.nii.gz")) / 1e6

        import SimpleITK as sitk

        started, decoded_bytes = time.perf_counter(), 0
        for case in dataset.cases:
            decoded_bytes += sitk.GetArrayFromImage(sitk.ReadImage(str(case.image_files[0]))).nbytes
            decoded_bytes += sitk.GetArrayFromImage(sitk.ReadImage(str(case.label_file))).nbytes
        baseline = time.perf_counter() - started
        decoded_mb = decoded_bytes / 1e6
        print(f"input: {decoded_mb:.0f} MB decoded, {on_disk_mb:.0f} MB on disk")
        print(f"baseline (SimpleITK read only, 1 process): {cases / baseline:.2f} cases/s, "
              f"{decoded_mb / baseline:.0f} MB/s decoded ({on_disk_mb / baseline:.0f} MB/s compressed)")
        for workers in args.workers:
            started = time.perf_counter()
            extract_fingerprint(dataset, workers=workers)
            seconds = time.perf_counter() - started
            print(f"fingerprint, {workers} worker(s): {cases / seconds:.2f} cases/s, {decoded_mb / seconds:.0f} MB/s "
                  f"decoded ({on_disk_mb / seconds:.0f} MB/s compressed), {seconds / baseline:.2f}x the read-only time")


if __name__ == "__main__":
    main()
