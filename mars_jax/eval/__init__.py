"""Evaluation: FID and CLIP score over pluggable features (``fid``, ``features``), the
standard networks (``inception``, ``clip``, ``weights``), FID statistics (``fid_stats``) and
the MS-COCO bench (``coco``, ``runner``)."""
