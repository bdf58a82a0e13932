"""GAN objectives against their closed forms; DiffAugment's ops do what they say."""

import pytest
import torch
import torch.nn.functional as F

from dgm_core.errors import UserError
from fqgan.diffaug import cutout, diff_augment, parse_policy, translation
from fqgan.losses import discriminator_loss, generator_loss


def test_hinge_losses_match_their_definition():
    real = torch.tensor([2.0, 0.5, -1.0])
    fake = torch.tensor([-3.0, 0.0, 1.0])
    # relu(1 - real) = [0, .5, 2] → mean 5/6; relu(1 + fake) = [0, 1, 2] → mean 1
    torch.testing.assert_close(discriminator_loss("hinge", real, fake), torch.tensor(5 / 6 + 1.0))
    torch.testing.assert_close(generator_loss("hinge", fake), torch.tensor(2 / 3))


def test_nonsaturating_losses_equal_binary_cross_entropy():
    real, fake = torch.randn(8), torch.randn(8)
    bce = F.binary_cross_entropy_with_logits
    expected_d = bce(real, torch.ones(8)) + bce(fake, torch.zeros(8))
    torch.testing.assert_close(discriminator_loss("nonsaturating", real, fake), expected_d)
    torch.testing.assert_close(generator_loss("nonsaturating", fake), bce(fake, torch.ones(8)))


def test_unknown_loss_is_rejected():
    with pytest.raises(ValueError, match="unknown GAN loss"):
        generator_loss("wasserstein", torch.zeros(2))


def test_translation_moves_content_and_fills_with_zeros():
    torch.manual_seed(0)
    x = torch.zeros(64, 1, 16, 16)
    x[:, :, 8, 8] = 1.0
    out = translation(x)
    positions = out.flatten(1).argmax(dim=1)
    rows, cols = positions // 16, positions % 16
    assert out.sum(dim=(1, 2, 3)).eq(1).all()  # a shift by ≤ 2 px keeps the centre pixel inside
    assert ((rows - 8).abs() <= 2).all() and ((cols - 8).abs() <= 2).all()
    assert len(set(positions.tolist())) > 1


def test_cutout_zeroes_at_most_a_quarter_of_each_image():
    torch.manual_seed(0)
    x = torch.ones(32, 3, 16, 16)
    out = cutout(x)
    zeroed = (out == 0).float().mean(dim=(1, 2, 3))
    assert (zeroed > 0).all() and (zeroed <= 0.25 + 1e-6).all()


def test_diff_augment_is_differentiable_and_empty_policy_is_identity():
    x = torch.randn(4, 3, 8, 8, requires_grad=True)
    assert diff_augment(x, []) is x
    diff_augment(x, parse_policy("color,translation,cutout")).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_unknown_policy_is_a_clear_error():
    with pytest.raises(UserError, match="unknown DiffAugment policy 'rotate'"):
        parse_policy("translation,rotate")
