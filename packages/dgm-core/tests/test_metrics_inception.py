"""The FID Inception: architecture and checkpoint layout, local weight loading, feature extraction.

No weights exist offline, so the network runs with random (well-scaled) weights: the tests pin
shapes, the reference's state-dict names and shapes, its TF pooling variants, and the loader's
and extractor's behaviour. Where pytorch-fid is installed, its network is compared output for output.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dgm_core.errors import UserError
from dgm_core.metrics import (
    FID_WEIGHTS_FILENAME,
    FeatureStatistics,
    FIDInceptionV3,
    default_weights_path,
    extract_features,
    iter_features,
    load_fid_inception,
)
from dgm_core.metrics.inception import FIDInceptionA, FIDInceptionE


def _well_scaled(model: nn.Module, seed: int = 0) -> nn.Module:
    """He-initialised convolutions and non-trivial batch-norm statistics keep activations O(1)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                fan_in = module.weight[0].numel()
                module.weight.copy_(
                    torch.randn(module.weight.shape, generator=generator) * (2 / fan_in) ** 0.5
                )
            elif isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1, generator=generator)
                module.running_var.uniform_(0.5, 1.5, generator=generator)
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.bias.uniform_(-0.1, 0.1, generator=generator)
    return model.eval()


@pytest.fixture(scope="module")
def inception() -> FIDInceptionV3:
    return _well_scaled(FIDInceptionV3())


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path / "torch_home"


def test_forward_gives_2048_pool_features_and_1008_logits(inception):
    images = torch.rand(2, 3, 32, 48)
    with torch.no_grad():
        pool_features, logits = inception(images)
    assert pool_features.shape == (2, 2048)
    assert logits.shape == (2, 1008)
    assert torch.isfinite(pool_features).all() and (pool_features >= 0).all()  # post-ReLU average
    # Logits are the unbiased classifier (original IS code): pool @ Wᵀ, no bias.
    torch.testing.assert_close(logits, pool_features @ inception.fc.weight.T)


def test_state_dict_has_the_reference_checkpoint_layout():
    state = FIDInceptionV3().state_dict()
    shapes = {key: tuple(value.shape) for key, value in state.items()}
    # Facts of pt_inception-2015-12-05: stem, TF pooling blocks, 1008-way classifier, no aux head.
    assert shapes["Conv2d_1a_3x3.conv.weight"] == (32, 3, 3, 3)
    assert shapes["Conv2d_4a_3x3.bn.running_var"] == (192,)
    assert shapes["Mixed_5b.branch_pool.conv.weight"] == (32, 192, 1, 1)
    assert shapes["Mixed_6b.branch7x7_2.conv.weight"] == (128, 128, 1, 7)
    assert shapes["Mixed_7c.branch3x3dbl_3b.conv.weight"] == (384, 384, 3, 1)
    assert shapes["Mixed_7c.branch_pool.conv.weight"] == (192, 2048, 1, 1)
    assert shapes["fc.weight"] == (1008, 2048) and shapes["fc.bias"] == (1008,)
    assert not any(key.startswith("AuxLogits") for key in state)
    assert all(".conv.bias" not in key for key in state)  # BasicConv2d convolutions carry no bias
    assert sum(p.numel() for p in FIDInceptionV3().parameters()) == 23_850_960


def test_state_dict_matches_the_torchvision_skeleton_pytorch_fid_loads_into():
    # pytorch-fid builds torchvision's inception_v3(num_classes=1008, aux_logits=False), swaps in
    # its FID blocks (same child names) and loads the checkpoint strictly into it.
    torchvision = pytest.importorskip("torchvision")
    skeleton = torchvision.models.inception_v3(
        weights=None, num_classes=1008, aux_logits=False, init_weights=False
    )
    reference = {key: tuple(value.shape) for key, value in skeleton.state_dict().items()}
    ours = {key: tuple(value.shape) for key, value in FIDInceptionV3().state_dict().items()}
    assert ours == reference


def test_outputs_equal_pytorch_fid_network_when_installed(inception, monkeypatch):
    pytorch_fid_inception = pytest.importorskip("pytorch_fid.inception")
    state = inception.state_dict()
    monkeypatch.setattr(pytorch_fid_inception, "load_state_dict_from_url", lambda *a, **k: dict(state))
    reference = pytorch_fid_inception.InceptionV3([3]).eval()
    images = torch.rand(2, 3, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(
            inception(images)[0], reference(images)[0].flatten(1), rtol=1e-5, atol=1e-5
        )


def test_optimized_network_gives_the_reference_features(inception):
    import copy

    optimized = copy.deepcopy(inception).optimize_for_inference(freeze=True)
    folded = copy.deepcopy(inception).optimize_for_inference()  # the default: no frozen graph
    images = torch.rand(3, 3, 48, 40)
    with torch.no_grad():
        reference, _ = inception(images)
        frozen, _ = optimized(images)  # traced and frozen on first use
        again, _ = optimized(images[:2])  # another batch size through the same frozen graph
        default, _ = folded(images)
    assert optimized._frozen and not folded._frozen
    torch.testing.assert_close(default, reference, rtol=1e-5, atol=1e-5)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in optimized.modules())
    torch.testing.assert_close(frozen, reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(again, reference[:2], rtol=1e-5, atol=1e-5)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        bf16, _ = optimized(images)  # eager modules under autocast
    torch.testing.assert_close(bf16.float(), reference, rtol=0.1, atol=0.1)
    with pytest.raises(RuntimeError, match="cannot be trained"):
        optimized.train()


def test_optimized_network_equals_pytorch_fid_when_installed(inception, monkeypatch):
    import copy

    pytorch_fid_inception = pytest.importorskip("pytorch_fid.inception")
    state = inception.state_dict()
    monkeypatch.setattr(pytorch_fid_inception, "load_state_dict_from_url", lambda *a, **k: dict(state))
    reference = pytorch_fid_inception.InceptionV3([3]).eval()
    optimized = copy.deepcopy(inception).optimize_for_inference()
    images = torch.rand(2, 3, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(
            optimized(images)[0], reference(images)[0].flatten(1), rtol=1e-5, atol=1e-5
        )


def _capture_pool_branch_input(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    captured = {}
    handle = block.branch_pool.register_forward_pre_hook(lambda module, args: captured.update(x=args[0]))
    with torch.no_grad():
        block.eval()(x)
    handle.remove()
    return captured["x"]


def test_mixed_block_average_pool_excludes_padding_like_tensorflow():
    x = torch.full((1, 192, 7, 7), 2.0)
    pooled = _capture_pool_branch_input(FIDInceptionA(192, pool_features=32), x)
    # Counting the zero padding would give 2·4/9 at the corners; TensorFlow's SAME pool keeps 2.
    torch.testing.assert_close(pooled, x)


def test_last_block_uses_max_pool_and_first_8x8_block_average_pool():
    x = torch.randn(1, 2048, 5, 5)
    torch.testing.assert_close(
        _capture_pool_branch_input(FIDInceptionE(2048, pool="max"), x), F.max_pool2d(x, 3, 1, 1)
    )
    torch.testing.assert_close(
        _capture_pool_branch_input(FIDInceptionE(2048, pool="avg"), x),
        F.avg_pool2d(x, 3, 1, 1, count_include_pad=False),
    )


def test_missing_weights_error_names_the_file_the_place_and_the_alternatives(torch_home):
    with pytest.raises(UserError) as error:
        load_fid_inception()
    message = str(error.value)
    assert FID_WEIGHTS_FILENAME in message
    assert str(torch_home / "hub" / "checkpoints") in message
    assert "--inception-weights" in message and "nn.Module" in message
    assert "\n" not in message
    with pytest.raises(UserError, match="not found"):
        load_fid_inception(torch_home / "elsewhere.pth")


def test_loads_weights_from_the_torch_hub_cache(inception, torch_home):
    path = default_weights_path()
    assert path == torch_home / "hub" / "checkpoints" / FID_WEIGHTS_FILENAME
    path.parent.mkdir(parents=True)
    torch.save(inception.state_dict(), path)
    loaded = load_fid_inception()
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    images = torch.rand(1, 3, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images)[0], inception(images)[0])


def test_loads_an_explicit_path_without_batchnorm_counters_and_safetensors(inception, tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    old_style = {k: v for k, v in inception.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(old_style, tmp_path / "old.pth")
    safetensors_torch.save_file(
        {k: v.contiguous() for k, v in old_style.items()}, str(tmp_path / "w.safetensors")
    )
    for name in ("old.pth", "w.safetensors"):
        loaded = load_fid_inception(tmp_path / name, optimize=False)  # keeps the bn modules
        torch.testing.assert_close(loaded.fc.weight, inception.fc.weight)
        torch.testing.assert_close(
            loaded.Mixed_7c.branch_pool.bn.running_var, inception.Mixed_7c.branch_pool.bn.running_var
        )


def test_wrong_weight_files_are_user_errors(inception, tmp_path):
    state = inception.state_dict()
    imagenet_like = dict(state, **{"fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)})
    torch.save(imagenet_like, tmp_path / "imagenet.pth")
    with pytest.raises(UserError, match="torchvision's ImageNet Inception"):
        load_fid_inception(tmp_path / "imagenet.pth")
    torch.save({k: v for k, v in state.items() if not k.startswith("Mixed_7c.")}, tmp_path / "partial.pth")
    with pytest.raises(UserError, match="missing"):
        load_fid_inception(tmp_path / "partial.pth")
    wrong_shape = dict(state, **{"Mixed_5b.branch1x1.conv.weight": torch.zeros(64, 192, 3, 3)})
    torch.save(wrong_shape, tmp_path / "shape.pth")
    with pytest.raises(UserError, match="wrong shapes"):
        load_fid_inception(tmp_path / "shape.pth")
    (tmp_path / "garbage.pth").write_bytes(b"\x00not a checkpoint")
    with pytest.raises(UserError, match="cannot read"):
        load_fid_inception(tmp_path / "garbage.pth")


def test_uint8_and_float_images_give_the_same_features(inception):
    images_uint8 = torch.randint(0, 256, (2, 3, 40, 40), dtype=torch.uint8)
    from_uint8, logits_uint8 = extract_features(inception, images_uint8, batch_size=2)
    from_float, logits_float = extract_features(inception, images_uint8.float() / 255, batch_size=2)
    torch.testing.assert_close(from_uint8, from_float)
    torch.testing.assert_close(logits_uint8, logits_float)
    assert from_uint8.dtype == torch.float32 and from_uint8.device.type == "cpu"


def test_float_images_outside_unit_range_are_user_errors(inception):
    with pytest.raises(UserError, match=r"\(x \+ 1\) / 2"):
        extract_features(inception, torch.rand(1, 3, 32, 32) * 2 - 1)
    with pytest.raises(UserError, match=r"\(N, 3, H, W\)"):
        extract_features(inception, torch.rand(1, 1, 32, 32))


class _TinyExtractor(nn.Module):
    """A plug-in extractor: any module mapping images to (N, D) features."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, kernel_size=3)
        self.dropout = nn.Dropout(0.5)
        self.seen_dtypes: list[torch.dtype] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.seen_dtypes.append(images.dtype)
        return self.dropout(self.conv(images)).mean(dim=(2, 3))


def test_any_module_plugs_in_and_batches_and_loader_tuples_are_handled():
    extractor = _TinyExtractor().train()
    images = torch.randint(0, 256, (7, 3, 12, 12), dtype=torch.uint8)
    features, logits = extract_features(extractor, images, batch_size=3)
    assert features.shape == (7, 6) and logits is None
    assert extractor.training, "the extractor's mode must be restored"
    assert set(extractor.seen_dtypes) == {torch.float32}  # uint8 arrives divided by 255
    loader_like = [(images[:4], torch.zeros(4)), (images[4:], torch.zeros(3))]
    from_loader, _ = extract_features(extractor, loader_like, batch_size=2)
    torch.testing.assert_close(from_loader, features)  # eval mode: dropout off, batching irrelevant


def test_streaming_features_into_statistics_equals_extracting_all():
    extractor = _TinyExtractor()
    images = torch.rand(20, 3, 10, 10)
    stats = FeatureStatistics(6)
    for features, _ in iter_features(extractor, images, batch_size=6):
        stats.update(features)
    all_features, _ = extract_features(extractor, images, batch_size=20)
    assert stats.count == 20
    torch.testing.assert_close(stats.mean(), all_features.double().mean(dim=0))


def test_extract_features_rejects_empty_input_and_non_tensors():
    with pytest.raises(UserError, match="no images"):
        extract_features(_TinyExtractor(), [])
    with pytest.raises(UserError, match="must be tensors"):
        extract_features(_TinyExtractor(), [[1, 2, 3]])
