"""Fingerprint throughput: cases/s and MB/s of input read, for 1 and N workers.

    python bench/fingerprint.py            # 40 cases of 128x256x256 (about 1.3 GB of voxels)
    python bench/fingerprint.py --quick    # 12 cases of 64x128x128

Baseline in the same run: reading every image and label with SimpleITK and nothing else, so the
ratio shows how much the analysis adds to plain I/O.
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
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    cases, shape = (12, (64, 128, 128)) if args.quick else (40, (128, 256, 256))
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        root = make_demo_dataset(tmp, "Task950_Bench", DemoSpec(cases=cases, shape=shape, spacing=(2.5, 0.8, 0.8), test_cases=0))
        print(f"generated {cases} cases of about {shape} in {time.perf_counter() - started:.1f} s")
        dataset = load_dataset(root)
        on_disk_mb = sum(f.stat().st_size for f in Path(root).rglob("*.nii.gz")) / 1e6
        voxel_mb = cases * 2 * 4 * float(shape[0] * shape[1] * shape[2]) / 1e6  # image + label as float32

        import SimpleITK as sitk

        started = time.perf_counter()
        for case in dataset.cases:
            sitk.GetArrayFromImage(sitk.ReadImage(str(case.image_files[0])))
            sitk.GetArrayFromImage(sitk.ReadImage(str(case.label_file)))
        baseline = time.perf_counter() - started
        print(f"baseline (read only, 1 process): {cases / baseline:.2f} cases/s, {voxel_mb / baseline:.0f} MB/s decoded")
        for workers in args.workers:
            started = time.perf_counter()
            extract_fingerprint(dataset, workers=workers)
            seconds = time.perf_counter() - started
            print(f"fingerprint, {workers} worker(s): {cases / seconds:.2f} cases/s, {voxel_mb / seconds:.0f} MB/s decoded "
                  f"({on_disk_mb / seconds:.0f} MB/s compressed), {seconds / baseline:.2f}x the read-only time")


if __name__ == "__main__":
    main()
