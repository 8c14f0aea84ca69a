"""Preprocessing: transpose, crop, normalize and resample cases into a configuration's grid, store
them as memory-mappable arrays, and put predictions back onto the original grid.

    resampling     new_shape_for, separate_axis_for, resample_image / _segmentation / _probabilities
    normalization  normalize (per-channel "ct" | "zscore" | "rgb_to_0_1" | "none")
    pipeline       preprocess_case, restore_to_original, CaseProperties
    store          CasePreprocessor, preprocess_dataset, load_case
"""

from autoseg.preprocessing.normalization import NORMALIZATION_SCHEMES, normalize
from autoseg.preprocessing.pipeline import CaseProperties, preprocess_case, restore_to_original
from autoseg.preprocessing.resampling import (new_shape_for, resample_image, resample_probabilities,
                                              resample_segmentation, separate_axis_for)
from autoseg.preprocessing.store import (CaseFailure, CasePreprocessor, PreprocessSummary, load_case,
                                         preprocess_dataset)

__all__ = [
    "NORMALIZATION_SCHEMES", "normalize", "CaseProperties", "preprocess_case", "restore_to_original",
    "new_shape_for", "resample_image", "resample_probabilities", "resample_segmentation", "separate_axis_for",
    "CaseFailure", "CasePreprocessor", "PreprocessSummary", "load_case", "preprocess_dataset",
]
