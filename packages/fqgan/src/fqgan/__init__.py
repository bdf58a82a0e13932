"""Feature-Quantization GAN (Zhao et al., ICML 2020): training, sampling and evaluation.

``FeatureQuantizer`` attaches dgm-core's EMA dictionary to any discriminator
block; :mod:`fqgan.models` holds BigGAN/DCGAN/MLP pairs, :mod:`fqgan.train`,
:mod:`fqgan.sample`, :mod:`fqgan.evaluate` and :mod:`fqgan.ablate` the CLIs.
"""

from fqgan.fq import FeatureQuantizer, QuantizedDiscriminator

__version__ = "0.1.0"

__all__ = ["FeatureQuantizer", "QuantizedDiscriminator", "__version__"]
