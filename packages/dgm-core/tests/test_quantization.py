"""EMAQuantizer and its functional pieces, checked against a float64 brute-force reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dgm_core.errors import UserError
from dgm_core.quantization import (
    EMAQuantizer,
    QuantizationInputError,
    QuantizerOutput,
    codeword_statistics,
    kmeans,
    nearest_codeword,
    perplexity,
)

# ---------------------------------------------------------------------------------------------------
# The reference formulation, in float64: FQ-GAN's Quantize with a full distance matrix and a one-hot
# matmul, dictionary stored (C, K) as in the reference.


class ReferenceQuantize:
    def __init__(self, codebook_kc: torch.Tensor, decay: float, eps: float) -> None:
        self.embed = codebook_kc.t().double().clone()  # (C, K)
        self.cluster_size = torch.zeros(self.embed.shape[1], dtype=torch.float64)
        self.embed_avg = self.embed.clone()
        self.decay, self.eps = decay, eps

    def distances(self, flat: torch.Tensor) -> torch.Tensor:
        flat = flat.double()
        return (
            flat.pow(2).sum(1, keepdim=True) - 2 * flat @ self.embed + self.embed.pow(2).sum(0, keepdim=True)
        )

    def step(self, flat: torch.Tensor, training: bool = True) -> dict[str, torch.Tensor]:
        flat = flat.double()
        dist = self.distances(flat)
        index = dist.argmin(1)
        onehot = F.one_hot(index, self.embed.shape[1]).double()
        quantize = self.embed.t()[index]
        if training:
            self.cluster_size.mul_(self.decay).add_(onehot.sum(0), alpha=1 - self.decay)
            self.embed_avg.mul_(self.decay).add_(flat.t() @ onehot, alpha=1 - self.decay)
            n = self.cluster_size.sum()
            cluster_size = (self.cluster_size + self.eps) / (n + self.embed.shape[1] * self.eps) * n
            self.embed = self.embed_avg / cluster_size.unsqueeze(0)
        avg_probs = onehot.mean(0)
        return {
            "index": index,
            "distances": dist,
            "quantize": quantize,
            "diff": (quantize - flat).pow(2).mean(),
            "perplexity": torch.exp(-torch.sum(avg_probs * torch.log(avg_probs + 1e-10))),
        }


def assert_same_assignments(indices: torch.Tensor, distances64: torch.Tensor) -> None:
    """Indices equal the float64 argmin, except where the two candidates tie to float32 precision."""
    expected = distances64.argmin(1)
    differ = indices != expected
    if differ.any():
        rows = differ.nonzero().flatten()
        chosen = distances64[rows, indices[rows]]
        best = distances64[rows, expected[rows]]
        scale = distances64[rows].abs().max(1).values
        assert torch.all(chosen - best <= 1e-6 * scale), f"non-tie mismatches at rows {rows.tolist()}"


def make_quantizer(dim: int = 16, k: int = 24, seed: int = 0, **kwargs) -> EMAQuantizer:
    torch.manual_seed(seed)
    return EMAQuantizer(dim, k, **kwargs)


# ---------------------------------------------------------------------------------------------------
# nearest_codeword


@pytest.mark.parametrize("chunk_size", [None, 1, 7, 64, 10_000])
def test_nearest_codeword_matches_float64_brute_force(chunk_size):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(203, 19, generator=g)
    codebook = torch.randn(37, 19, generator=g)
    indices, sq = nearest_codeword(x, codebook, chunk_size)
    brute = torch.cdist(x.double(), codebook.double()).pow(2)
    assert indices.shape == (203,) and indices.dtype == torch.long
    assert_same_assignments(indices, brute)
    torch.testing.assert_close(sq.double(), brute.min(1).values, rtol=1e-5, atol=1e-4)


def test_nearest_codeword_returns_first_of_exactly_tied_codewords():
    codebook = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [-1.0, 0.0]])
    x = torch.tensor([[2.0, 0.0], [0.0, 3.0], [-0.5, 0.0]])
    indices, sq = nearest_codeword(x, codebook, chunk_size=2)
    assert indices.tolist() == [0, 1, 3]
    torch.testing.assert_close(sq, torch.tensor([1.0, 4.0, 0.25]))


def test_nearest_codeword_upcasts_half_precision_inputs():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(50, 8, generator=g).bfloat16()
    codebook = torch.randn(10, 8, generator=g)
    indices, sq = nearest_codeword(x, codebook)
    assert sq.dtype == torch.float32
    assert_same_assignments(indices, torch.cdist(x.double(), codebook.double()).pow(2))


def test_nearest_codeword_rejects_mismatched_channels_naming_both_shapes():
    with pytest.raises(QuantizationInputError, match=r"\(5, 3\).*\(4, 2\)"):
        nearest_codeword(torch.randn(5, 3), torch.randn(4, 2))
    with pytest.raises(QuantizationInputError, match="floating point"):
        nearest_codeword(torch.ones(5, 2, dtype=torch.long), torch.randn(4, 2))
    with pytest.raises(QuantizationInputError, match="backend"):
        nearest_codeword(torch.randn(5, 2), torch.randn(4, 2), backend="cuda")


def test_nearest_codeword_gives_nonfinite_distance_for_bad_rows():
    x = torch.randn(6, 4)
    x[2, 1] = float("nan")
    x[4, 0] = float("inf")
    _, sq = nearest_codeword(x, torch.randn(5, 4))
    assert torch.isfinite(sq).tolist() == [True, True, False, True, False, True]


# ---------------------------------------------------------------------------------------------------
# statistics


def test_codeword_statistics_equal_one_hot_matmul():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(300, 6, generator=g)
    indices = torch.randint(0, 11, (300,), generator=g)
    counts, sums = codeword_statistics(x, indices, 11)
    onehot = F.one_hot(indices, 11).double()
    torch.testing.assert_close(counts.double(), onehot.sum(0))
    torch.testing.assert_close(sums.double(), onehot.t() @ x.double(), rtol=1e-6, atol=1e-5)


def test_perplexity_closed_forms():
    assert perplexity(torch.full((8,), 5.0)).item() == pytest.approx(8.0)
    assert perplexity(torch.tensor([0.0, 7.0, 0.0])).item() == pytest.approx(1.0)
    assert perplexity(torch.tensor([1.0, 1.0, 0.0, 2.0])).item() == pytest.approx(2.0**1.5)
    assert perplexity(torch.zeros(4)).item() == pytest.approx(1.0)


def test_kmeans_finds_separated_clusters():
    g = torch.Generator().manual_seed(4)
    centers = torch.tensor([[10.0, 0.0], [-10.0, 0.0], [0.0, 10.0], [0.0, -10.0]])
    x = centers.repeat_interleave(50, 0) + 0.1 * torch.randn(200, 2, generator=g)
    seeds = x[torch.tensor([0, 50, 100, 150])] + 1.0
    centroids, counts = kmeans(x, 4, iters=5, seed_features=seeds)
    torch.testing.assert_close(centroids, centers, atol=0.1, rtol=0)
    assert counts.tolist() == [50.0] * 4


# ---------------------------------------------------------------------------------------------------
# EMAQuantizer against the reference


@pytest.mark.parametrize("decay", [0.8, 0.99])
def test_training_steps_match_float64_reference(decay):
    quantizer = make_quantizer(dim=16, k=24, decay=decay)
    reference = ReferenceQuantize(quantizer.codebook, decay=decay, eps=1e-5)
    g = torch.Generator().manual_seed(5)
    for _ in range(4):
        flat = torch.randn(512, 16, generator=g) * 1.5 + 0.3
        ref = reference.step(flat)
        out = quantizer(flat)
        assert_same_assignments(out.indices, ref["distances"])
        assert torch.equal(out.indices, ref["index"])  # no near-ties in this seeded draw
        torch.testing.assert_close(out.quantized.double(), ref["quantize"], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(out.commitment_loss.double(), ref["diff"], rtol=1e-5, atol=0)
        torch.testing.assert_close(out.perplexity.double(), ref["perplexity"], rtol=1e-5, atol=0)
        torch.testing.assert_close(quantizer.cluster_size.double(), reference.cluster_size, rtol=1e-6, atol=0)
        torch.testing.assert_close(
            quantizer.embed_avg.double(), reference.embed_avg.t(), rtol=1e-6, atol=1e-6
        )
        torch.testing.assert_close(quantizer.codebook.double(), reference.embed.t(), rtol=1e-6, atol=1e-6)
    for buffer in (quantizer.codebook, quantizer.cluster_size, quantizer.embed_avg):
        assert buffer.dtype == torch.float32


def test_eval_mode_never_updates_the_dictionary():
    quantizer = make_quantizer().eval()
    before = {name: b.clone() for name, b in quantizer.named_buffers()}
    out = quantizer(torch.randn(100, 16))
    for name, buffer in quantizer.named_buffers():
        assert torch.equal(buffer, before[name]), name
    torch.testing.assert_close(out.quantized, quantizer.codebook[out.indices])
    assert out.usage.sum().item() == 100


def test_outputs_describe_the_batch():
    quantizer = make_quantizer(dim=4, k=6, commitment_weight=0.25)
    x = torch.randn(40, 4)
    out = quantizer(x)
    assert isinstance(out, QuantizerOutput)
    counts = torch.bincount(out.indices, minlength=6).float()
    assert torch.equal(out.usage, counts)
    assert out.dead_codes.item() == int((counts == 0).sum())
    assert out.dead_codes.dtype == torch.long
    assert out.perplexity.item() == pytest.approx(perplexity(counts).item())
    torch.testing.assert_close(
        out.commitment_loss_per_sample, 0.25 * (out.quantized - x).pow(2).mean(1), rtol=1e-5, atol=1e-6
    )
    torch.testing.assert_close(out.commitment_loss, out.commitment_loss_per_sample.mean())


def test_straight_through_and_commitment_gradients():
    quantizer = make_quantizer(dim=4, k=6, commitment_weight=0.5)
    x = torch.randn(3, 5, 4, requires_grad=True)
    out = quantizer(x)
    (grad_q,) = torch.autograd.grad(out.quantized.sum(), x, retain_graph=True)
    assert torch.equal(grad_q, torch.ones_like(x))
    (grad_c,) = torch.autograd.grad(out.commitment_loss, x)
    codewords = out.quantized.detach()
    torch.testing.assert_close(grad_c, 2 * 0.5 * (x.detach() - codewords) / x.numel(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    ("shape", "index_shape"),
    [((30, 8), (30,)), ((3, 7, 8), (3, 7)), ((2, 8, 5, 3), (2, 5, 3))],
)
def test_layouts_quantize_each_feature_vector(shape, index_shape):
    quantizer = make_quantizer(dim=8, k=10).eval()
    x = torch.randn(*shape)
    out = quantizer(x)
    assert out.quantized.shape == x.shape
    assert out.indices.shape == index_shape
    assert out.commitment_loss_per_sample.shape == (shape[0],)
    channel_last = x.permute(0, 2, 3, 1) if x.dim() == 4 else x
    q_last = out.quantized.permute(0, 2, 3, 1) if x.dim() == 4 else out.quantized
    expected, _ = nearest_codeword(channel_last.reshape(-1, 8), quantizer.codebook)
    assert torch.equal(out.indices.flatten(), expected)
    torch.testing.assert_close(q_last.reshape(-1, 8), quantizer.codebook[expected])


def test_feature_map_training_equals_flattened_training():
    a, b = make_quantizer(dim=8, k=10, seed=3), make_quantizer(dim=8, k=10, seed=3)
    fmap = torch.randn(2, 8, 5, 3)
    out_map = a(fmap)
    out_flat = b(fmap.permute(0, 2, 3, 1).reshape(-1, 8))
    assert torch.equal(out_map.indices.flatten(), out_flat.indices)
    torch.testing.assert_close(a.codebook, b.codebook)


def test_bf16_autocast_keeps_dictionary_float32_and_finite():
    quantizer = make_quantizer(dim=16, k=32)
    x = torch.randn(4, 16, 6, 6)
    conv = torch.nn.Conv2d(16, 16, 1)
    for _ in range(3):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            features = conv(x)
            assert features.dtype == torch.bfloat16
            out = quantizer(features)
        assert out.quantized.dtype == torch.bfloat16
        assert out.commitment_loss.dtype == torch.float32
        (out.quantized.float().sum() + out.commitment_loss).backward()
    for buffer in (quantizer.codebook, quantizer.cluster_size, quantizer.embed_avg):
        assert buffer.dtype == torch.float32
        assert torch.isfinite(buffer).all()
    assert conv.weight.grad is not None and torch.isfinite(conv.weight.grad).all()


def test_half_precision_input_without_autocast_is_upcast_inside():
    quantizer = make_quantizer(dim=8, k=10)
    x = torch.randn(64, 8)
    twin = make_quantizer(dim=8, k=10)
    out = quantizer(x.bfloat16())
    twin(x.bfloat16().float())
    assert out.quantized.dtype == torch.bfloat16
    torch.testing.assert_close(quantizer.codebook, twin.codebook)


def test_state_dict_round_trip_reproduces_outputs():
    quantizer = make_quantizer(dim=8, k=12, dead_code_threshold=3)
    for _ in range(3):
        quantizer(torch.randn(50, 8))
    clone = make_quantizer(dim=8, k=12, seed=99, dead_code_threshold=3)
    clone.load_state_dict(quantizer.state_dict())
    assert set(quantizer.state_dict()) == {
        "codebook",
        "cluster_size",
        "embed_avg",
        "unused_steps",
        "initialized",
    }
    x = torch.randn(40, 8)
    torch.manual_seed(1)  # revival draws features with the global generator
    a = quantizer(x)
    torch.manual_seed(1)
    b = clone(x)
    assert torch.equal(a.indices, b.indices)
    for name, buffer in quantizer.named_buffers():
        assert torch.equal(buffer, dict(clone.named_buffers())[name]), name


def test_loads_fqgan_reference_state_dict_layout():
    source = make_quantizer(dim=8, k=12)
    source(torch.randn(30, 8))
    legacy = {
        "embed": source.codebook.t().clone(),
        "cluster_size": source.cluster_size.clone(),
        "embed_avg": source.embed_avg.t().clone(),
    }
    target = make_quantizer(dim=8, k=12, seed=5)
    target.load_state_dict(legacy)
    assert torch.equal(target.codebook, source.codebook)
    assert torch.equal(target.embed_avg, source.embed_avg)


def test_quantization_error_falls_as_the_dictionary_tracks_the_data():
    g = torch.Generator().manual_seed(6)
    centers = 3 * torch.randn(16, 8, generator=g) + 5
    quantizer = make_quantizer(dim=8, k=32)
    losses = []
    for _ in range(15):
        x = centers[torch.randint(0, 16, (256,), generator=g)] + 0.1 * torch.randn(256, 8, generator=g)
        losses.append(quantizer(x).commitment_loss.item())
    assert losses[-1] < 0.2 * losses[0]


# ---------------------------------------------------------------------------------------------------
# options


def test_dead_codes_are_revived_from_current_features_after_threshold_steps():
    quantizer = make_quantizer(dim=4, k=8, dead_code_threshold=2)
    with torch.no_grad():
        quantizer.codebook[4:] = 1e3  # codewords 4..7 are far from any feature: never chosen
        quantizer.embed_avg.copy_(quantizer.codebook)
    x = torch.randn(64, 4)
    first = quantizer(x)
    assert first.dead_codes.item() >= 4
    assert (quantizer.unused_steps[4:] == 1).all()
    quantizer(x)  # second unused step: revived
    assert (quantizer.unused_steps == 0).all()
    revived = quantizer.codebook[4:]
    distances = torch.cdist(revived, x)
    assert torch.all(distances.min(1).values < 1e-5), "revived codewords are features of the batch"
    assert torch.equal(quantizer.embed_avg[4:], revived)
    assert (quantizer.cluster_size[4:] == 1).all()
    third = quantizer(x)
    assert third.dead_codes.item() < first.dead_codes.item()


def test_dead_codes_are_kept_when_revival_is_off():
    quantizer = make_quantizer(dim=4, k=8)
    with torch.no_grad():
        quantizer.codebook[4:] = 1e3
        quantizer.embed_avg.copy_(quantizer.codebook)
    for _ in range(3):
        quantizer(torch.randn(64, 4))
    assert (quantizer.unused_steps[4:] == 3).all()
    assert (quantizer.codebook[4:].abs() > 10).all()


def test_kmeans_init_runs_once_on_the_first_training_batch():
    g = torch.Generator().manual_seed(7)
    centers = torch.tensor([[10.0, 0.0], [-10.0, 0.0], [0.0, 10.0], [0.0, -10.0]])
    x = centers.repeat_interleave(64, 0) + 0.1 * torch.randn(256, 2, generator=g)
    quantizer = make_quantizer(dim=2, k=4, kmeans_init=True, kmeans_iters=10)
    assert not bool(quantizer.initialized)
    quantizer.eval()(x)
    assert not bool(quantizer.initialized), "eval mode must not initialise"
    out = quantizer.train()(x)
    assert bool(quantizer.initialized)
    assert out.perplexity.item() > 3.5  # random-seeded k-means on four blobs: all four used
    matched = torch.cdist(centers, quantizer.codebook).min(1).values
    assert torch.all(matched < 0.2)
    snapshot = quantizer.codebook.clone()
    quantizer(x)
    torch.testing.assert_close(quantizer.codebook, snapshot, atol=0.05, rtol=0)


def test_cosine_distance_works_on_the_unit_sphere():
    quantizer = make_quantizer(dim=6, k=9, distance="cosine")
    g = torch.Generator().manual_seed(8)
    for _ in range(3):
        x = torch.randn(80, 6, generator=g) * 4
        codebook_before = quantizer.codebook.clone()
        out = quantizer(x)
        similarity = F.normalize(x.double(), dim=1) @ codebook_before.double().t()
        assert torch.equal(out.indices, similarity.argmax(1))
        torch.testing.assert_close(out.quantized.norm(dim=1), torch.ones(80), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(quantizer.codebook.norm(dim=1), torch.ones(9), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"codebook_size": 0}, "codebook_size"),
        ({"codebook_size": -3}, "codebook_size"),
        ({"dim": 0}, "dim"),
        ({"decay": 1.0}, "decay"),
        ({"eps": 0.0}, "eps"),
        ({"distance": "manhattan"}, "distance"),
        ({"dead_code_threshold": -1}, "dead_code_threshold"),
    ],
)
def test_bad_settings_raise_one_clear_error(kwargs, message):
    settings = {"dim": 4, "codebook_size": 8, **kwargs}
    with pytest.raises(QuantizationInputError, match=message):
        EMAQuantizer(**settings)


def test_wrong_channel_count_names_the_shape():
    quantizer = make_quantizer(dim=8, k=4)
    with pytest.raises(QuantizationInputError, match=r"dim=8.*7 channels.*\(2, 7, 3, 3\)"):
        quantizer(torch.randn(2, 7, 3, 3))
    with pytest.raises(QuantizationInputError, match=r"\(5, 3, 9\)"):
        quantizer(torch.randn(5, 3, 9))
    with pytest.raises(QuantizationInputError, match="5-D"):
        quantizer(torch.randn(1, 8, 2, 2, 2))


def test_integer_features_are_rejected():
    with pytest.raises(QuantizationInputError, match="torch.int64"):
        make_quantizer(dim=4, k=4)(torch.ones(3, 4, dtype=torch.long))


def test_input_errors_are_user_errors_and_value_errors():
    assert issubclass(QuantizationInputError, UserError)
    assert issubclass(QuantizationInputError, ValueError)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("training", [True, False])
def test_nonfinite_features_raise_and_leave_the_dictionary_untouched(bad, training):
    quantizer = make_quantizer(dim=4, k=8, dead_code_threshold=1).train(training)
    quantizer(torch.randn(20, 4))
    before = {name: b.clone() for name, b in quantizer.named_buffers()}
    x = torch.randn(20, 4)
    x[13, 2] = bad
    with pytest.raises(QuantizationInputError, match="NaN or inf.*row 13"):
        quantizer(x)
    for name, buffer in quantizer.named_buffers():
        assert torch.equal(buffer, before[name]), name


def test_nonfinite_features_raise_before_kmeans_init():
    quantizer = make_quantizer(dim=4, k=8, kmeans_init=True)
    before = quantizer.codebook.clone()
    x = torch.randn(20, 4)
    x[0, 0] = float("nan")
    with pytest.raises(QuantizationInputError, match="NaN or inf"):
        quantizer(x)
    assert torch.equal(quantizer.codebook, before)
    assert not bool(quantizer.initialized)


def test_casting_the_model_to_half_precision_keeps_the_dictionary_float32():
    quantizer = make_quantizer(dim=8, k=10).to(torch.bfloat16)
    for buffer in (quantizer.codebook, quantizer.cluster_size, quantizer.embed_avg):
        assert buffer.dtype == torch.float32
    out = quantizer(torch.randn(32, 8, dtype=torch.bfloat16))
    assert out.quantized.dtype == torch.bfloat16
    assert torch.isfinite(quantizer.codebook).all()
    assert quantizer.half().codebook.dtype == torch.float32


def test_empty_batch_is_a_clear_error():
    with pytest.raises(QuantizationInputError, match="empty batch"):
        make_quantizer(dim=4, k=4)(torch.randn(0, 4))


def test_per_sample_commitment_loss_of_feature_maps_averages_over_channels_and_positions():
    quantizer = make_quantizer(dim=8, k=10, commitment_weight=2.0)
    x = torch.randn(3, 8, 4, 5, requires_grad=True)
    out = quantizer(x)
    expected = 2.0 * (out.quantized.detach() - x.detach()).pow(2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(out.commitment_loss_per_sample, expected, rtol=1e-5, atol=1e-6)
    (grad,) = torch.autograd.grad(out.commitment_loss_per_sample[1], x)
    assert grad[0].abs().sum() == 0 and grad[2].abs().sum() == 0
    torch.testing.assert_close(grad[1], 2.0 * 2 * (x[1] - out.quantized[1]).detach() / x[1].numel())


def test_commitment_loss_is_the_same_when_computed_in_many_row_blocks(monkeypatch):
    import dgm_core.quantization.ema_quantizer as ema_quantizer

    x = torch.randn(203, 8, requires_grad=True)
    whole = make_quantizer(dim=8, k=10).eval()(x)
    (grad_whole,) = torch.autograd.grad(whole.commitment_loss, x)
    monkeypatch.setattr(ema_quantizer._SquaredError, "block_bytes", 4 * 8 * 17)  # 17-row blocks
    blocked = make_quantizer(dim=8, k=10).eval()(x)
    (grad_blocked,) = torch.autograd.grad(blocked.commitment_loss, x)
    torch.testing.assert_close(blocked.commitment_loss_per_sample, whole.commitment_loss_per_sample)
    torch.testing.assert_close(grad_blocked, grad_whole)
    expected = (x.detach() - whole.quantized.detach()).pow(2).mean(1)
    torch.testing.assert_close(blocked.commitment_loss_per_sample, expected, rtol=1e-5, atol=1e-6)


def test_flush_subnormal_zeroes_only_numbers_below_the_smallest_normal_one():
    from dgm_core.quantization.ops import flush_subnormal_

    tiny = torch.finfo(torch.float32).tiny
    values = torch.tensor([tiny / 4, -tiny / 2, tiny, -tiny, 1.0, 0.0, -3e-30])
    expected = values.clone()
    expected[:2] = 0.0
    flush_subnormal_(values)
    assert torch.equal(values, expected)


def test_an_abandoned_codeword_decays_to_zero_without_passing_through_subnormal_numbers():
    from dgm_core.quantization.ops import ema_update_

    codebook, embed_avg = torch.ones(2, 3), torch.ones(2, 3)
    cluster_size = torch.tensor([5.0, 5.0])
    counts, sums = torch.tensor([4.0, 0.0]), torch.tensor([[4.0, 4.0, 4.0], [0.0, 0.0, 0.0]])
    tiny = torch.finfo(torch.float32).tiny
    for _ in range(600):  # 0.8 ** 600 ≈ 1e-58: far below float32's normal range
        ema_update_(codebook, cluster_size, embed_avg, counts, sums, decay=0.8, eps=1e-5)
        for tensor in (codebook, cluster_size, embed_avg):
            assert not ((tensor != 0) & (tensor.abs() < tiny)).any()
    assert cluster_size[1] == 0 and embed_avg[1].eq(0).all() and codebook[1].eq(0).all()
    # The codeword in use is unaffected: it converges to its features' mean.
    assert codebook[0].tolist() == pytest.approx([1.0, 1.0, 1.0], rel=1e-4)
