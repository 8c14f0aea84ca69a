"""autoseg: self-configuring medical image segmentation.

Axis convention used everywhere inside autoseg: arrays are (channel, z, y, x) for images
and (z, y, x) for segmentations, i.e. numpy order of a SimpleITK image. Spacings and shapes
are listed in the same (z, y, x) order, in millimetres and voxels. Conversions to and from
file conventions happen only in `autoseg.io`.
"""

__version__ = "0.1.0"
