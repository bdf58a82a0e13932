"""Feature-Quantization GAN (Zhao et al., ICML 2020): training, sampling and evaluation.

``FeatureQuantizer`` attaches dgm-core's EMA dictionary to any discriminator
block. Libraries: :mod:`fqgan.models` (BigGAN/DCGAN/MLP pairs), :mod:`fqgan.data`,
:mod:`fqgan.folders` (image folders: listing, decoding), :mod:`fqgan.packed` (image
folders packed into memory-mapped shards), :mod:`fqgan.losses`, :mod:`fqgan.diffaug`,
:mod:`fqgan.checkpoints` (trained models from a checkpoint), :mod:`fqgan.generation`
(noise, samples, grids), :mod:`fqgan.factor_classifier` and :mod:`fqgan.metrics`. CLIs,
on top: :mod:`fqgan.train`, :mod:`fqgan.sample`, :mod:`fqgan.evaluate`,
:mod:`fqgan.prepare` and :mod:`fqgan.ablate` (the one CLI that runs others: train and
evaluate).
"""

from fqgan.fq import FeatureQuantizer, QuantizedDiscriminator

__version__ = "0.1.0"

__all__ = ["FeatureQuantizer", "QuantizedDiscriminator", "__version__"]
