"""Model shapes for every preset's architecture, conditional and not, and clear errors on bad sizes."""

import pytest
import torch

from dgm_core.errors import UserError
from fqgan.losses import discriminator_loss, generator_loss
from fqgan.models import BigGANDiscriminator, BigGANGenerator, build_models
from fqgan.train import PRESETS


def _preset_model_config(preset: str, width: int) -> dict:
    """A preset's architecture at a test-sized width (the layout, blocks and FQ layers are the preset's)."""
    options = PRESETS[preset]
    return {
        "arch": options.get("arch", "dcgan"),
        "resolution": 0 if options.get("arch") == "mlp" else options.get("resolution", 32),
        "g_ch": width,
        "d_ch": width,
        "z_dim": options.get("z_dim", 128),
        "num_classes": 0 if options.get("arch") == "mlp" else 5,
        "fq_mode": "loss_only",
        "fq_layers": options.get("fq_layers", "0,1,2,3"),
        "fq_codebook_size": options.get("fq_codebook_size", 256),
        "fq_decay": options.get("fq_decay", 0.8),
        "fq_commitment": options.get("fq_commitment", 1.0),
    }


@pytest.mark.parametrize("preset", ["demo", "cifar10", "cifar100", "imagenet64", "grid25", "ring8"])
def test_every_preset_builds_models_whose_shapes_fit(preset):
    torch.manual_seed(0)
    config = _preset_model_config(preset, width=4 if preset == "imagenet64" else 8)
    generator, discriminator = build_models(config)
    n = 2 if preset == "imagenet64" else 4
    z = torch.randn(n, config["z_dim"])
    y = torch.randint(config["num_classes"], (n,)) if config["num_classes"] else None
    x = generator(z, y)
    if config["resolution"]:
        assert x.shape == (n, 3, config["resolution"], config["resolution"])
        assert x.abs().max() <= 1.0
    else:
        assert x.shape == (n, 2)
    scores = discriminator(x, y)
    assert scores.shape == (n,)
    fq_layers = [int(i) for i in config["fq_layers"].split(",")]
    assert sorted(int(name[len("block") :]) for name in discriminator.quantizers) == fq_layers
    loss = (
        discriminator_loss("hinge", scores, scores)
        + discriminator.pop_fq_loss()
        + generator_loss("hinge", scores)
    )
    loss.backward()
    assert all(p.grad is not None for p in generator.parameters() if p.requires_grad)


def test_cifar_preset_discriminator_has_the_biggan_32_layout():
    d = BigGANDiscriminator(resolution=32, ch=64)
    assert d.block_channels == [256, 256, 256, 256]
    g = BigGANGenerator(resolution=32, ch=64)
    assert g.base_channels == 256 and len(g.blocks) == 3


def test_imagenet64_layout_and_attention_slot_keep_block_indices():
    d = BigGANDiscriminator(resolution=64, ch=8, attention=32)
    assert d.block_channels == [8, 16, 32, 64, 128]
    assert isinstance(d.blocks[0], torch.nn.Sequential)  # attention rides in block 0's slot (32×32 output)
    g = BigGANGenerator(resolution=64, ch=8, attention=32, num_classes=3)
    out = g(torch.randn(2, 128), torch.tensor([0, 2]))
    assert out.shape == (2, 3, 64, 64)


def test_conditional_models_depend_on_the_label():
    torch.manual_seed(1)
    g, d = build_models({"arch": "dcgan", "resolution": 32, "g_ch": 8, "d_ch": 8, "num_classes": 3})
    with torch.no_grad():
        # Make the class embeddings non-trivial (they start as identity cBN / random projection).
        for module in g.modules():
            if isinstance(module, torch.nn.Embedding):
                module.weight.normal_()
    g.eval()
    z = torch.randn(2, 128)
    a, b = g(z, torch.tensor([0, 0])), g(z, torch.tensor([1, 1]))
    assert not torch.allclose(a, b)
    x = torch.randn(2, 3, 32, 32)
    assert not torch.allclose(d(x, torch.tensor([0, 0])), d(x, torch.tensor([2, 2])))


@pytest.mark.parametrize("arch,resolution", [("biggan", 48), ("biggan", 128), ("dcgan", 40)])
def test_unsupported_image_size_is_a_clear_error(arch, resolution):
    with pytest.raises(UserError, match=f"{arch} architecture takes .*not {resolution}"):
        build_models({"arch": arch, "resolution": resolution, "g_ch": 4, "d_ch": 4})


def test_discriminator_rejects_images_of_another_size():
    _, d = build_models({"arch": "dcgan", "resolution": 32, "g_ch": 4, "d_ch": 4})
    with pytest.raises(UserError, match="takes 32-pixel images"):
        d(torch.randn(1, 3, 64, 64))


def test_fq_layer_that_does_not_exist_is_a_clear_error():
    with pytest.raises(UserError, match="FQ layer index 4 does not exist"):
        build_models(
            {
                "arch": "biggan",
                "resolution": 32,
                "g_ch": 4,
                "d_ch": 4,
                "fq_mode": "loss_only",
                "fq_layers": "4",
            }
        )


# BigGAN-PyTorch's architecture tables (BigGAN.py, G_arch / D_arch; FQ-BigGAN trains the same), as
# (out channels in units of ch, output side in pixels) per block. G starts from a 4×4 map of
# in_channels[0]·ch channels and every G block doubles the side; D blocks average-pool by 2 where
# `downsample` is True: 32 → [True, True, False, False], 64 → [True] * 4 + [False].
BIGGAN_G_BLOCKS = {
    32: [(4, 8), (4, 16), (4, 32)],
    64: [(16, 8), (8, 16), (4, 32), (2, 64)],
}
BIGGAN_G_INPUT = {32: 4, 64: 16}  # in_channels[0]
BIGGAN_D_BLOCKS = {
    32: [(4, 16), (4, 8), (4, 8), (4, 8)],
    64: [(1, 32), (2, 16), (4, 8), (8, 4), (16, 4)],
}


@pytest.mark.parametrize("resolution", [32, 64])
def test_biggan_block_shapes_follow_the_biggan_pytorch_tables(resolution):
    ch, n = 2, 2
    torch.manual_seed(0)
    g = BigGANGenerator(resolution=resolution, ch=ch, z_dim=8, num_classes=3)
    d = BigGANDiscriminator(resolution=resolution, ch=ch, num_classes=3)
    shapes = {"g": [], "d": []}
    for name, model in (("g", g), ("d", d)):
        for block in model.blocks:
            block.register_forward_hook(lambda m, i, o, name=name: shapes[name].append(tuple(o.shape)))
    y = torch.tensor([0, 2])
    with torch.no_grad():
        base = g.linear(torch.randn(n, 8)).view(n, -1, 4, 4)
        images = g(torch.randn(n, 8), y)
        d(images, y)
    assert base.shape[1] == BIGGAN_G_INPUT[resolution] * ch
    assert shapes["g"] == [(n, c * ch, side, side) for c, side in BIGGAN_G_BLOCKS[resolution]]
    assert shapes["d"] == [(n, c * ch, side, side) for c, side in BIGGAN_D_BLOCKS[resolution]]
    assert d.block_channels == [c * ch for c, _ in BIGGAN_D_BLOCKS[resolution]]


@pytest.mark.parametrize(
    "config",
    [
        {"arch": "biggan", "resolution": 32, "num_classes": 5},
        {"arch": "biggan", "resolution": 64, "num_classes": 5, "attention": 32},
        {"arch": "dcgan", "resolution": 32, "num_classes": 5},
    ],
    ids=["biggan32", "biggan64", "dcgan32"],
)
def test_fresh_models_are_spectrally_normalised_in_eval_mode_without_a_training_forward(config):
    # Eval-mode forwards never run the power iteration: the stored singular vectors must already
    # describe the initialised weights, so every normalised weight has top singular value 1.
    torch.manual_seed(3)
    generator, discriminator = build_models({"g_ch": 8, "d_ch": 8, "z_dim": 16, **config})
    checked = 0
    for model in (generator.eval(), discriminator.eval()):
        for module in model.modules():
            if hasattr(module, "parametrizations") and "weight" in module.parametrizations:
                normalised = module.weight.detach()  # eval mode: W / (uᵀ W v) with the stored u, v
                top = torch.linalg.matrix_norm(normalised.flatten(1), ord=2)
                assert top.item() == pytest.approx(1.0, abs=1e-4), type(module).__name__
                checked += 1
    assert checked >= 9
    # ... and the outputs of a fresh D are of ordinary size (not blown up by 1/σ of stale vectors).
    x = torch.rand(4, 3, config["resolution"], config["resolution"]) * 2 - 1
    with torch.no_grad():
        scores = discriminator(x, torch.tensor([0, 1, 2, 3]))
    assert scores.abs().max() < 10
