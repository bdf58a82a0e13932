"""Generator/discriminator pairs: BigGAN-style ResNets, a small DCGAN/SNGAN, MLPs for 2-D mixtures.

:func:`build_models` rebuilds a pair from the plain ``model_config`` dict that
every checkpoint carries, so a checkpoint alone is enough to sample from.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from dgm_core.errors import UserError
from fqgan.models.biggan import BigGANDiscriminator, BigGANGenerator
from fqgan.models.dcgan import DCGANDiscriminator, DCGANGenerator
from fqgan.models.mlp import MLPDiscriminator, MLPGenerator

ARCHITECTURES = ("biggan", "dcgan", "mlp")

__all__ = [
    "ARCHITECTURES",
    "BigGANDiscriminator",
    "BigGANGenerator",
    "DCGANDiscriminator",
    "DCGANGenerator",
    "MLPDiscriminator",
    "MLPGenerator",
    "build_models",
]


def build_models(model_config: dict[str, Any]) -> tuple[nn.Module, nn.Module]:
    """``(generator, discriminator)`` from a model config.

    Keys: ``arch`` (biggan | dcgan | mlp), ``resolution``, ``g_ch``, ``d_ch``,
    ``z_dim``, ``num_classes`` (0 = unconditional), ``attention`` (biggan: the
    resolution of a self-attention block, 0 = none), and the FQ keys
    ``fq_mode`` (none | loss_only | quantize), ``fq_layers``, ``fq_codebook_size``,
    ``fq_decay``, ``fq_commitment``, ``fq_kmeans_init``, ``fq_dead_code_threshold``.
    """
    arch = model_config["arch"]
    num_classes = int(model_config.get("num_classes", 0))
    resolution = int(model_config.get("resolution", 32))
    z_dim = int(model_config.get("z_dim", 128))
    g_ch, d_ch = int(model_config.get("g_ch", 64)), int(model_config.get("d_ch", 64))
    if arch == "biggan":
        attention = int(model_config.get("attention", 0))
        generator: nn.Module = BigGANGenerator(resolution, g_ch, z_dim, num_classes, attention)
        discriminator = BigGANDiscriminator(resolution, d_ch, num_classes, attention)
    elif arch == "dcgan":
        generator = DCGANGenerator(resolution, g_ch, z_dim, num_classes)
        discriminator = DCGANDiscriminator(resolution, d_ch, num_classes)
    elif arch == "mlp":
        generator = MLPGenerator(z_dim, g_ch)
        discriminator = MLPDiscriminator(d_ch)
    else:
        raise UserError(f"unknown --arch '{arch}': expected one of {', '.join(ARCHITECTURES)}")
    fq_mode = model_config.get("fq_mode", "none")
    if fq_mode != "none":
        discriminator.enable_feature_quantization(
            model_config.get("fq_layers", "0"),
            mode=fq_mode,
            codebook_size=int(model_config.get("fq_codebook_size", 1024)),
            decay=float(model_config.get("fq_decay", 0.8)),
            commitment_weight=float(model_config.get("fq_commitment", 1.0)),
            kmeans_init=bool(model_config.get("fq_kmeans_init", False)),
            dead_code_threshold=int(model_config.get("fq_dead_code_threshold", 0)),
        )
    return generator, discriminator
