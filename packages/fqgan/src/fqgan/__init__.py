"""Feature-Quantization GAN (Zhao et al., ICML 2020): training, sampling and evaluation."""

__version__ = "0.1.0"
