import json
import shutil
from pathlib import Path

import pytest

from autoseg.demo import DemoSpec, make_demo_dataset


@pytest.fixture(scope="session")
def small_ct_dataset(tmp_path_factory) -> Path:
    """6 synthetic CT cases of about 20x32x32 (read-only: copy before modifying)."""
    root = tmp_path_factory.mktemp("raw")
    return make_demo_dataset(root, "Task900_Demo", DemoSpec(cases=6, shape=(20, 32, 32), spacing=(2.0, 1.0, 1.0)))


@pytest.fixture
def writable_dataset(small_ct_dataset, tmp_path) -> Path:
    target = tmp_path / small_ct_dataset.name
    shutil.copytree(small_ct_dataset, target)
    return target


def edit_dataset_json(root: Path, change) -> None:
    meta = json.loads((root / "dataset.json").read_text())
    change(meta)
    (root / "dataset.json").write_text(json.dumps(meta))
