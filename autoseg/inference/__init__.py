"""Prediction: from a preprocessed image to class probabilities, and from them to a segmentation.

`autoseg.inference.sliding_window` holds where the windows lie and how they are weighted
(`window_starts`, `gaussian_importance_map`, `mirror_axes_combinations`, DEFAULT_STEP_FRACTION; numpy
only), `autoseg.inference.stitching` the networks run over them (`predict_sliding_window`, or several
mirror TTA sets from the same passes), `autoseg.inference.mirroring` which mirror sets are compared, and
`autoseg.inference.model` the trained networks of a configuration's folds, `autoseg.inference.case`
one case (preprocess, predict, restore to the input's grid) and `autoseg.inference.folder` a folder of
cases with reading and writing overlapped. Nothing is re-exported here so that importing
the package does not import torch.
"""
