#!/usr/bin/env python
"""sissi_d2: SISSI label correction for Detectron2 (see README.md)."""
from setuptools import find_packages, setup

setup(
    name="sissi-d2",
    version="0.1.0",
    description="Seamless Iterative Semi-Supervised correction of Imperfect labels, for Detectron2",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["sissi_d2", "sissi_d2.*"]),
    python_requires=">=3.9",
    # detectron2 is installed by scripts/install.sh (no wheel of it exists on PyPI), torch likewise.
    install_requires=[
        "numpy>=1.23,<3",
        # headless: no GUI windows are ever opened, and it needs no X11/GL system libraries.
        "opencv-python-headless>=4.8,<6",
        "ensemble-boxes>=1.0.9,<2",
        "pycocotools>=2.0.6,<3",
        "fvcore>=0.1.5,<0.1.6",
        "scipy>=1.11,<2",
        "scikit-image>=0.22,<1",
        "matplotlib>=3.6",
        "tqdm>=4.60",
        "tabulate>=0.8",
        # Cropping polygon annotations (fvcore CropTransform.apply_polygons, used by Detectron2's
        # crop augmentations on instance masks) imports shapely.
        "shapely>=2,<3",
    ],
    extras_require={"test": ["pytest>=7", "hypothesis>=6.80"]},
)
