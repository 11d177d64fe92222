"""nnU-Net v2 extension: pancreas and lesion segmentation plus lesion-subtype classification."""

__version__ = "0.1.0"
