"""The FeatureQuantizer wrapper: both modes, loss bookkeeping, hooks, and the D integration."""

import pytest
import torch
from torch import nn

from dgm_core.errors import UserError
from fqgan.fq import FeatureQuantizer, fq_statistics, parse_fq_layers, pop_fq_loss
from fqgan.models import DCGANDiscriminator


def _nearest_rows(features: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Brute-force nearest codeword of each (B, C, H, W) feature vector, in (B, C, H, W) layout."""
    flat = features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])
    index = torch.cdist(flat, codebook).argmin(dim=1)
    b, c, h, w = features.shape
    return codebook[index].view(b, h, w, c).permute(0, 3, 1, 2)


def test_loss_only_mode_passes_features_through_and_records_commitment_loss():
    torch.manual_seed(0)
    fq = FeatureQuantizer(dim=6, codebook_size=16, decay=0.8, commitment_weight=2.0, mode="loss_only").eval()
    x = torch.randn(3, 6, 4, 5, requires_grad=True)
    out = fq(x)
    assert out is x
    quantized = _nearest_rows(x.detach(), fq.codebook)
    expected = 2.0 * (quantized - x.detach()).pow(2).mean()
    loss = fq.pop_loss()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    loss.backward()
    # d/dx β·mean((sg(q) − x)²) = 2β(x − q)/numel
    torch.testing.assert_close(x.grad, 2 * 2.0 * (x.detach() - quantized) / x.numel(), rtol=1e-4, atol=1e-7)


def test_quantize_mode_returns_codewords_with_straight_through_gradient():
    torch.manual_seed(1)
    fq = FeatureQuantizer(dim=4, codebook_size=8, mode="quantize").eval()
    x = torch.randn(2, 4, 3, 3, requires_grad=True)
    out = fq(x)
    torch.testing.assert_close(out.detach(), _nearest_rows(x.detach(), fq.codebook))
    (out * 3.0).sum().backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, 3.0))


def test_pop_loss_sums_every_call_then_resets():
    torch.manual_seed(2)
    fq = FeatureQuantizer(dim=3, codebook_size=4).eval()
    a, b = torch.randn(5, 3), torch.randn(7, 3)
    fq(a)
    fq(b)
    first = fq.pop_loss()
    fq(a)
    only_a = fq.pop_loss()
    fq(b)
    only_b = fq.pop_loss()
    torch.testing.assert_close(first, only_a + only_b)
    assert fq.pop_loss().item() == 0.0


def test_training_mode_updates_the_dictionary_and_eval_mode_does_not():
    torch.manual_seed(3)
    fq = FeatureQuantizer(dim=4, codebook_size=8, decay=0.5)
    before = fq.codebook.clone()
    fq.eval()(torch.randn(16, 4) + 5)
    torch.testing.assert_close(fq.codebook, before)
    fq.train()(torch.randn(16, 4) + 5)
    assert not torch.equal(fq.codebook, before)
    assert fq.perplexity is not None and fq.dead_codes is not None


def test_attach_quantizes_any_block_output_by_hook_until_removed():
    torch.manual_seed(4)
    block = nn.Conv2d(3, 5, 3, padding=1)
    model = nn.Sequential(block, nn.ReLU(), nn.Flatten(), nn.LazyLinear(1))
    fq = FeatureQuantizer(dim=5, codebook_size=4, mode="quantize").eval()
    handle = fq.attach(block)
    x = torch.randn(2, 3, 6, 6)
    seen = {}
    model[1].register_forward_hook(lambda m, i, o: seen.setdefault("relu_in", i[0].detach()))
    model(x)
    codewords = fq.codebook
    vectors = seen["relu_in"].permute(0, 2, 3, 1).reshape(-1, 5)
    # every vector that reached the ReLU is one of the codewords
    distances = (vectors[:, None, :] - codewords[None]).norm(dim=-1)
    assert distances.min(dim=1).values.max() < 1e-5
    assert fq.pop_loss() > 0
    handle.remove()
    model(x)
    assert fq.pop_loss().item() == 0.0


def test_discriminator_gets_one_dictionary_per_layer_with_that_blocks_width():
    d = DCGANDiscriminator(resolution=32, ch=8, num_classes=0)
    layers = d.enable_feature_quantization("1,3", mode="loss_only", codebook_size=16)
    assert layers == [1, 3]
    assert {name: q.codebook.shape for name, q in d.quantizers.items()} == {
        "block1": (16, d.block_channels[1]),
        "block3": (16, d.block_channels[3]),
    }
    scores = d(torch.randn(4, 3, 32, 32))
    loss = d.pop_fq_loss()
    assert scores.shape == (4,) and loss.item() > 0
    assert set(fq_statistics(d.quantizers)) == {
        "fq/perplexity_block1",
        "fq/dead_codes_block1",
        "fq/perplexity_block3",
        "fq/dead_codes_block3",
    }


def test_quantize_mode_changes_discriminator_output_and_loss_only_does_not():
    torch.manual_seed(5)
    x = torch.randn(4, 3, 32, 32)
    plain = DCGANDiscriminator(resolution=32, ch=8).eval()
    reference = plain(x)
    for mode, same in (("loss_only", True), ("quantize", False)):
        d = DCGANDiscriminator(resolution=32, ch=8).eval()
        d.load_state_dict(plain.state_dict())
        d.enable_feature_quantization("0", mode=mode, codebook_size=8)
        assert torch.allclose(d(x), reference) is same


def test_bad_fq_layer_index_is_a_clear_error():
    with pytest.raises(UserError, match="FQ layer index 7 does not exist.*blocks 0..3"):
        parse_fq_layers("0,7", 4)
    with pytest.raises(UserError, match="comma-separated"):
        parse_fq_layers("a,b", 4)
    with pytest.raises(UserError, match="unknown FQ mode"):
        FeatureQuantizer(4, 4, mode="sometimes")


def test_pop_fq_loss_of_no_quantizers_is_zero():
    assert pop_fq_loss([]).item() == 0.0


def _commitment_per_sample(features: torch.Tensor, codebook: torch.Tensor, beta: float) -> torch.Tensor:
    """β · mean over a sample's elements of (nearest codeword − feature)², by brute force."""
    return beta * (_nearest_rows(features, codebook) - features).pow(2).flatten(1).mean(dim=1)


def test_batch_parts_give_the_mean_of_each_part_summed_as_the_reference_d_loss():
    # FQ-GAN's D loss adds quant_loss_real.mean() + quant_loss_fake.mean(): with real and fake in one
    # call, the term is the sum of the two part means — not the mean over the concatenated batch.
    torch.manual_seed(6)
    fq = FeatureQuantizer(dim=4, codebook_size=8, commitment_weight=1.5).eval()
    real = torch.randn(3, 4, 2, 2) * 3 + 2  # far from the N(0, 1) dictionary: large commitment
    fake = torch.randn(5, 4, 2, 2) * 0.3  # near it: small commitment
    fq(torch.cat([real, fake]))
    loss = fq.pop_loss(batch_parts=(3, 5))
    real_mean = _commitment_per_sample(real, fq.codebook, 1.5).mean()
    fake_mean = _commitment_per_sample(fake, fq.codebook, 1.5).mean()
    torch.testing.assert_close(loss, real_mean + fake_mean, rtol=1e-5, atol=1e-6)
    # Without parts: the mean over all eight samples, as before.
    fq(torch.cat([real, fake]))
    overall = torch.cat([_commitment_per_sample(x, fq.codebook, 1.5) for x in (real, fake)]).mean()
    torch.testing.assert_close(fq.pop_loss(), overall, rtol=1e-5, atol=1e-6)


def test_discriminator_pop_fq_loss_takes_batch_parts_per_block_and_rejects_wrong_ones():
    torch.manual_seed(7)
    d = DCGANDiscriminator(resolution=16, ch=4)
    d.enable_feature_quantization("0,2", codebook_size=8, commitment_weight=0.5)
    d.eval()  # frozen dictionaries: the reference below reads them after the call
    real, fake = torch.randn(2, 3, 16, 16) + 1, torch.randn(4, 3, 16, 16)
    features = {}
    for index in (0, 2):
        d.blocks[index].register_forward_hook(lambda m, i, o, index=index: features.setdefault(index, o))
    d(torch.cat([real, fake]))
    expected = sum(
        _commitment_per_sample(features[i][:2], d.fq[str(i)].codebook, 0.5).mean()
        + _commitment_per_sample(features[i][2:], d.fq[str(i)].codebook, 0.5).mean()
        for i in (0, 2)
    )
    torch.testing.assert_close(d.pop_fq_loss(batch_parts=(2, 4)), expected, rtol=1e-5, atol=1e-6)
    d(torch.cat([real, fake]))
    with pytest.raises(ValueError, match="do not cut a batch of 6"):
        d.pop_fq_loss(batch_parts=(3, 4))
