"""Prediction: from a preprocessed image to logits, and from logits to a segmentation.

`autoseg.inference.sliding_window` holds the tiling core (`predict_sliding_window`,
`predict_slices_2d`, `window_starts`, `gaussian_importance_map`, `mirror_axes_combinations`).
Nothing is re-exported here so that importing the package does not import torch.
"""
