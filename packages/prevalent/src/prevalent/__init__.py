"""PREVALENT (Hao et al., CVPR 2020): pre-trained vision-and-language navigation agent."""

__version__ = "0.1.0"
