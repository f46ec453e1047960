"""mbp: learned robust relative-pose estimation for two calibrated images.

Convention for the whole package: a pair is (image 0, image 1) and the relative pose maps camera-0
coordinates to camera-1 coordinates, ``x1 = R x0 + t`` with ``||t|| = 1`` and ``E = [t]x R``.
"""

__version__ = "0.1.0"

CONVENTION = "x1 = R x0 + t (cam1_from_cam0), ||t|| = 1, E = [t]x R, x1^T E x0 = 0 on normalized coordinates"
