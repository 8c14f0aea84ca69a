"""Cross-validation splits: 5 folds by a seeded KFold over sorted case ids, saved as splits.json.

A user may edit splits.json (any number of folds, any assignment); it is respected as long as it
names only known cases.
"""

from __future__ import annotations

from pathlib import Path

from autoseg.artifacts import read_json, write_json
from autoseg.errors import AutosegError

NUM_FOLDS = 5
SPLIT_SEED = 12345


def make_splits(case_ids: list[str], num_folds: int = NUM_FOLDS, seed: int = SPLIT_SEED) -> list[dict]:
    from sklearn.model_selection import KFold

    ids = sorted(case_ids)
    if len(ids) < 2:
        raise AutosegError(f"cross-validation needs at least 2 cases, found {len(ids)}")
    folds = min(num_folds, len(ids))
    splitter = KFold(n_splits=folds, shuffle=True, random_state=seed)
    return [{"train": [ids[i] for i in train], "val": [ids[i] for i in val]} for train, val in splitter.split(ids)]


def load_or_create_splits(path: Path, case_ids: list[str]) -> list[dict]:
    if path.is_file():
        splits = read_json(path)
        known = set(case_ids)
        if not isinstance(splits, list) or not all(isinstance(s, dict) and "train" in s and "val" in s for s in splits):
            raise AutosegError(f"{path}: expected a list of {{\"train\": [...], \"val\": [...]}}")
        for index, split in enumerate(splits):
            unknown = sorted((set(split["train"]) | set(split["val"])) - known)
            if unknown:
                raise AutosegError(f"{path}: fold {index} names unknown cases {unknown[:5]}")
        return splits
    splits = make_splits(case_ids)
    write_json(path, splits)
    return splits


def fold_cases(splits: list[dict], fold: int | str, all_cases: list[str]) -> tuple[list[str], list[str]]:
    """(training ids, validation ids). Fold "all" trains and validates on every case."""
    if fold == "all":
        return sorted(all_cases), sorted(all_cases)
    fold = int(fold)
    if not 0 <= fold < len(splits):
        raise AutosegError(f"fold {fold} does not exist: splits.json has folds 0..{len(splits) - 1} (or 'all')")
    return list(splits[fold]["train"]), list(splits[fold]["val"])
