"""The FID Inception network (TF ``inception-2015-12-05`` ported to PyTorch) and feature extraction.

FID, KID and IS are only comparable across papers when computed with the same network: the
2015-12-05 TensorFlow Inception-v3 graph that the original TTUR FID code used, ported to
PyTorch as ``pt_inception-2015-12-05-6726825d.pth`` by pytorch-fid (torch-fidelity and
torchmetrics load the same file). It differs from torchvision's ImageNet Inception-v3 in
weights and in three places of the architecture, reproduced here:

- the average pools inside the 35×35, 17×17 and first 8×8 mixed blocks (``Mixed_5b``–``Mixed_7b``)
  exclude the zero padding from the average (TensorFlow's ``SAME`` pooling);
- the pool branch of the last block (``Mixed_7c``) uses *max* pooling instead of average pooling;
- the classifier has 1008 outputs (the 2015 graph's label space) and there is no auxiliary head.

The network is written out here in plain torch (dgm-core does not depend on torchvision),
with the module names of the reference so the checkpoint's state-dict keys load unchanged.
No weights ship with dgm-core and nothing is downloaded: :func:`load_fid_inception` reads a
local file. Without it, any ``nn.Module`` mapping images to feature vectors can be passed to
:func:`extract_features` instead (its numbers are then not comparable to published FIDs).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dgm_core.errors import UserError

FID_WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
# pytorch-fid's file name; torch-fidelity ships the same port as the alternative name below.
FID_WEIGHTS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + FID_WEIGHTS_FILENAME
)
_ALTERNATIVE_FILENAMES = ("weights-inception-2015-12-05-6726825d.pth",)

INCEPTION_INPUT_SIZE = 299
POOL_FEATURES_DIM = 2048
NUM_CLASSES = 1008


class BasicConv2d(nn.Module):
    """Convolution without bias, batch norm (eps 1e-3, TensorFlow's), ReLU."""

    def __init__(self, in_channels: int, out_channels: int, **conv_kwargs) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **conv_kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))

    @torch.no_grad()
    def fold_batch_norm(self) -> None:
        """Fold the (frozen, eval-mode) batch norm into the convolution: one op instead of two.

        ``bn(conv(x)) = γ (W x - μ) / sqrt(σ² + ε) + β = (s W) x + (β - s μ)`` with
        ``s = γ / sqrt(σ² + ε)``; computed in float64, so the folded layer differs from the pair
        only by float32 rounding.
        """
        if isinstance(self.bn, nn.Identity):
            return
        bn = self.bn
        scale = bn.weight.double() / (bn.running_var.double() + bn.eps).sqrt()
        weight = self.conv.weight.double() * scale.view(-1, 1, 1, 1)
        bias = bn.bias.double() - scale * bn.running_mean.double()
        conv = self.conv
        folded = nn.Conv2d(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            bias=True,
        ).to(device=conv.weight.device)
        folded.weight.copy_(weight.to(conv.weight.dtype))
        folded.bias.copy_(bias.to(conv.weight.dtype))
        folded.requires_grad_(conv.weight.requires_grad)
        self.conv, self.bn = folded, nn.Identity()


def _tf_average_pool(x: torch.Tensor) -> torch.Tensor:
    # TensorFlow's SAME average pooling divides by the number of real (unpadded) inputs.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class FIDInceptionA(nn.Module):
    """35×35 mixed block (``Mixed_5b/c/d``): 1×1, 5×5, double 3×3 and pooled branches."""

    def __init__(self, in_channels: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        branch_pool = self.branch_pool(_tf_average_pool(x))
        return torch.cat([self.branch1x1(x), branch5x5, branch3x3dbl, branch_pool], dim=1)


class InceptionB(nn.Module):
    """35×35 → 17×17 grid reduction (``Mixed_6a``); identical to the standard network."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        branch_pool = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([self.branch3x3(x), branch3x3dbl, branch_pool], dim=1)


class FIDInceptionC(nn.Module):
    """17×17 mixed block (``Mixed_6b``–``6e``) with factorised 1×7 / 7×1 convolutions."""

    def __init__(self, in_channels: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        branch7x7dbl = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            branch7x7dbl = layer(branch7x7dbl)
        branch_pool = self.branch_pool(_tf_average_pool(x))
        return torch.cat([self.branch1x1(x), branch7x7, branch7x7dbl, branch_pool], dim=1)


class InceptionD(nn.Module):
    """17×17 → 8×8 grid reduction (``Mixed_7a``); identical to the standard network."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3 = self.branch3x3_2(self.branch3x3_1(x))
        branch7x7x3 = self.branch7x7x3_1(x)
        for layer in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            branch7x7x3 = layer(branch7x7x3)
        branch_pool = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([branch3x3, branch7x7x3, branch_pool], dim=1)


class FIDInceptionE(nn.Module):
    """8×8 mixed block with split 1×3 / 3×1 outputs (``Mixed_7b`` and ``Mixed_7c``).

    ``pool="avg"`` (``Mixed_7b``) averages without padding; ``pool="max"`` (``Mixed_7c``) is the
    TF graph's max pool in the last block, which the FID weights were trained and ported with.
    """

    def __init__(self, in_channels: int, pool: str) -> None:
        super().__init__()
        if pool not in ("avg", "max"):
            raise ValueError(f"pool must be 'avg' or 'max', got {pool!r}")
        self.pool = pool
        self.branch1x1 = BasicConv2d(in_channels, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3 = self.branch3x3_1(x)
        branch3x3 = torch.cat([self.branch3x3_2a(branch3x3), self.branch3x3_2b(branch3x3)], dim=1)
        branch3x3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        branch3x3dbl = torch.cat(
            [self.branch3x3dbl_3a(branch3x3dbl), self.branch3x3dbl_3b(branch3x3dbl)], dim=1
        )
        if self.pool == "max":
            pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        else:
            pooled = _tf_average_pool(x)
        return torch.cat([self.branch1x1(x), branch3x3, branch3x3dbl, self.branch_pool(pooled)], dim=1)


class FIDInceptionV3(nn.Module):
    """The FID Inception-v3: images → (2048-d pool features, 1008-way logits).

    Input: (N, 3, H, W) RGB, float in [0, 1] (or uint8 in [0, 255], divided by 255). As
    pytorch-fid, the images are resized to 299×299 with bilinear interpolation
    (``align_corners=False``, no antialiasing) and mapped to [-1, 1] by ``2x - 1``. Grayscale
    (1-channel) images must be repeated to 3 channels by the caller.

    Output: ``(pool_features, logits)``; ``pool_features`` (N, 2048) is the final average pool
    used for FID and KID; ``logits`` (N, 1008) are ``pool_features @ fc.weightᵀ`` *without* the
    fc bias by default, as the original Inception Score code (and torch-fidelity's
    ``logits_unbiased``) computes them; ``classifier_bias=True`` adds the bias.

    Build it with random weights for shapes and timing only; :func:`load_fid_inception` loads the
    real ones. Layer names match the reference checkpoint's keys.
    """

    def __init__(
        self, resize_input: bool = True, normalize_input: bool = True, classifier_bias: bool = False
    ):
        super().__init__()
        self.resize_input = resize_input
        self.normalize_input = normalize_input
        self.classifier_bias = classifier_bias
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = FIDInceptionA(192, pool_features=32)
        self.Mixed_5c = FIDInceptionA(256, pool_features=64)
        self.Mixed_5d = FIDInceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
        self.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = FIDInceptionE(1280, pool="avg")
        self.Mixed_7c = FIDInceptionE(2048, pool="max")
        self.fc = nn.Linear(POOL_FEATURES_DIM, NUM_CLASSES)

    def optimize_for_inference(self, channels_last: bool = True, freeze: bool = False) -> FIDInceptionV3:
        """Make feature extraction faster; the features equal the reference network's to float32
        rounding (tested to 1e-5 against the unoptimised network and against pytorch-fid's).

        * every batch norm is folded into its convolution (one pass over each activation less);
        * ``channels_last`` memory format, which oneDNN's and cuDNN's convolutions prefer;
        * ``freeze`` (opt-in): the network body is traced once per device and frozen as a
          TorchScript graph, which fuses each convolution with its ReLU (fp32 and no-grad calls
          only; others run the eager modules). On the 2-core development CPU it gained nothing
          over the first two, so it is off by default.

        The model stays in eval mode and cannot be trained afterwards; the state dict no longer
        has the reference's ``bn`` keys, so load the weights first.
        """
        self.eval()
        for module in self.modules():
            if isinstance(module, BasicConv2d):
                module.fold_batch_norm()
        self._channels_last = channels_last
        self._freeze = freeze
        self._frozen: dict[tuple, torch.jit.ScriptModule] = {}
        if channels_last:
            self.to(memory_format=torch.channels_last)
        return self

    def train(self, mode: bool = True) -> FIDInceptionV3:
        if mode and getattr(self, "_channels_last", None) is not None:
            raise RuntimeError("an Inception optimized for inference (batch norm folded) cannot be trained")
        return super().train(mode)

    def _body(self, x: torch.Tensor) -> torch.Tensor:
        """Preprocessed images → the 2048-d pool features."""
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))  # N×64×147×147
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # N×64×73×73
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))  # N×192×71×71
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # N×192×35×35
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a):
            x = block(x)  # → N×768×17×17
        for block in (self.Mixed_6b, self.Mixed_6c, self.Mixed_6d, self.Mixed_6e, self.Mixed_7a):
            x = block(x)  # → N×1280×8×8
        x = self.Mixed_7c(self.Mixed_7b(x))  # N×2048×8×8
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)

    def _frozen_body(self, x: torch.Tensor):
        """The traced-and-frozen body for x's device and dtype, or None where it does not apply."""
        if not getattr(self, "_freeze", False) or torch.is_grad_enabled() or x.dtype != torch.float32:
            return None
        # (torch 2.3's spelling: the CUDA flag takes no device argument there)
        autocast = torch.is_autocast_cpu_enabled() if x.device.type == "cpu" else torch.is_autocast_enabled()
        if autocast:
            return None
        key = (x.device, x.dtype)
        if key not in self._frozen:
            with warnings.catch_warnings():
                # TorchScript is in maintenance in torch 2.x; freezing is still what fuses
                # conv + bias + ReLU on CPU without a compiler toolchain (torch.compile needs one).
                warnings.simplefilter("ignore")
                traced = torch.jit.trace(_Body(self), x[:1], check_trace=False)
                self._frozen[key] = torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))
        return self._frozen[key]

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 → [0, 1]; range check; resize to 299²; [0, 1] → [-1, 1] (per the flags)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise UserError(
                f"the FID Inception takes (N, 3, H, W) RGB images, got shape {tuple(images.shape)}"
            )
        if images.dtype == torch.uint8:
            images = images.float() / 255.0
        elif not images.is_floating_point():
            raise UserError(f"images must be uint8 or floating point, got {images.dtype}")
        elif self.normalize_input and images.numel():
            low, high = float(images.min()), float(images.max())
            if low < -1e-3 or high > 1 + 1e-3:
                raise UserError(
                    f"float images must lie in [0, 1], got values in [{low:.3g}, {high:.3g}]; "
                    "map generator outputs in [-1, 1] with (x + 1) / 2"
                )
        images = images.to(self.fc.weight.dtype)
        if self.resize_input:
            size = (INCEPTION_INPUT_SIZE, INCEPTION_INPUT_SIZE)
            images = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        if self.normalize_input:
            images = 2.0 * images - 1.0
        if getattr(self, "_channels_last", False):
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.preprocess(images)
        frozen = self._frozen_body(x)
        pool_features = frozen(x) if frozen is not None else self._body(x)
        logits = F.linear(pool_features, self.fc.weight, self.fc.bias if self.classifier_bias else None)
        return pool_features, logits


class _Body(nn.Module):
    """The convolutional body alone, as a module to trace."""

    def __init__(self, inception: FIDInceptionV3):
        super().__init__()
        self.inception = inception

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inception._body(x)


def default_weights_path() -> Path:
    """Where torch hub caches pytorch-fid's weights: ``$TORCH_HOME/hub/checkpoints/`` (``~/.cache/torch``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / FID_WEIGHTS_FILENAME


def _missing_weights_message(searched: list[Path]) -> str:
    return (
        f"FID Inception weights not found (looked for {', '.join(str(p) for p in searched)}); "
        f"download {FID_WEIGHTS_URL} on a machine with internet and put it at {default_weights_path()} "
        "or pass --inception-weights PATH; or pass any nn.Module mapping images to features to "
        "extract_features() (its scores are then not comparable to published FID/IS/KID)"
    )


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # corrupt file, pickle with code, truncated download
        raise UserError(f"cannot read Inception weights from {path}: {error}") from error
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path} does not hold a state dict of tensors")
    return state


def _check_state_dict(
    model: nn.Module, state: dict[str, torch.Tensor], path: Path
) -> dict[str, torch.Tensor]:
    """Every expected key present with its shape; BatchNorm's counters are optional (old checkpoints)."""
    expected = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    given = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    if any(k.startswith("AuxLogits.") for k in given) or given.get("fc.weight", torch.empty(0)).shape[:1] == (
        1000,
    ):
        raise UserError(
            f"{path} looks like torchvision's ImageNet Inception-v3, not the FID Inception "
            f"({FID_WEIGHTS_FILENAME}); FID/IS/KID need the latter"
        )
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    wrong = sorted(k for k in set(expected) & set(given) if expected[k].shape != given[k].shape)
    if missing or unexpected or wrong:
        details = []
        if missing:
            details.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong:
            key = wrong[0]
            details.append(
                f"{len(wrong)} with wrong shapes (e.g. {key}: {tuple(given[key].shape)} "
                f"vs {tuple(expected[key].shape)})"
            )
        raise UserError(f"{path} is not the FID Inception state dict: {'; '.join(details)}")
    return given


def load_fid_inception(
    path: str | os.PathLike | None = None,
    device: torch.device | str | None = None,
    classifier_bias: bool = False,
    optimize: bool = True,
) -> FIDInceptionV3:
    """The FID Inception with pytorch-fid's ``pt_inception-2015-12-05`` weights, in eval mode, frozen.

    Args:
        path: the weights file (``--inception-weights PATH``; ``.pth`` state dict or
            ``.safetensors``). Default: the torch hub cache, ``default_weights_path()``, or
            torch-fidelity's copy of the same file beside it.
        device: where to put the model (CPU by default).
        classifier_bias: see :class:`FIDInceptionV3`.
        optimize: fold batch norms and use channels-last
            (:meth:`FIDInceptionV3.optimize_for_inference`); features equal the reference
            network's to float32 rounding. ``False`` keeps the reference's module structure.

    Raises:
        UserError: no file (the message says which file, where to put it and the alternative),
            or a file that is not this network's state dict.
    """
    if path is not None:
        candidates = [Path(path).expanduser()]
    else:
        cache = default_weights_path().parent
        candidates = [cache / name for name in (FID_WEIGHTS_FILENAME, *_ALTERNATIVE_FILENAMES)]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise UserError(_missing_weights_message(candidates))
    model = FIDInceptionV3(classifier_bias=classifier_bias)
    state = _check_state_dict(model, _read_state_dict(found), found)
    model.load_state_dict(state, strict=False)
    model.requires_grad_(False)
    model = model.eval().to(device if device is not None else "cpu")
    return model.optimize_for_inference() if optimize else model


def _image_batches(images: torch.Tensor | Iterable, batch_size: int) -> Iterator[torch.Tensor]:
    """Chunks of at most ``batch_size`` images from a tensor or an iterable of tensors or tuples."""
    source = [images] if isinstance(images, torch.Tensor) else images
    for item in source:
        batch = item[0] if isinstance(item, (tuple, list)) else item
        if isinstance(batch, dict):
            raise UserError("image batches must be tensors or (images, labels) tuples, got a dict")
        if not isinstance(batch, torch.Tensor):
            raise UserError(f"image batches must be tensors, got {type(batch).__name__}")
        if batch.ndim == 3:
            batch = batch.unsqueeze(0)
        yield from batch.split(batch_size)


def _split_output(output: torch.Tensor | tuple | list) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(output, (tuple, list)):
        features, logits = output[0], (output[1] if len(output) > 1 else None)
    else:
        features, logits = output, None
    return torch.flatten(features, 1), logits


def iter_features(
    model: nn.Module,
    images: torch.Tensor | Iterable,
    batch_size: int = 50,
    device: torch.device | str | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """Yield ``(features, logits)`` per batch (float32, CPU) without keeping them.

    Arguments and conventions are those of :func:`extract_features`.

    Use it to stream features straight into :class:`FeatureStatistics` for large sample sets.
    """
    if batch_size < 1:
        raise UserError(f"batch_size must be positive, got {batch_size}")
    if device is None:
        parameter = next(model.parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
    device = torch.device(device)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for batch in _image_batches(images, batch_size):
                batch = batch.to(device, non_blocking=True)
                if batch.dtype == torch.uint8:
                    batch = batch.float() / 255.0
                features, logits = _split_output(model(batch))
                yield features.float().cpu(), (logits.float().cpu() if logits is not None else None)
    finally:
        model.train(was_training)


def extract_features(
    model: nn.Module,
    images: torch.Tensor | Iterable,
    batch_size: int = 50,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run a feature extractor over images and return ``(pool_features, logits)``, float32 on the CPU.

    Args:
        model: :func:`load_fid_inception`'s network or any ``nn.Module`` mapping an image batch to
            a (N, D) feature tensor (or (N, D, 1, 1), flattened), or to a ``(features, logits)``
            tuple. It runs in eval mode under ``torch.inference_mode`` (its mode is restored after).
        images: a (N, C, H, W) tensor, or an iterable of such batches or of ``(images, labels, ...)``
            tuples (a ``DataLoader``). Batches larger than ``batch_size`` are split.
            Input conventions: **uint8** images hold [0, 255] and are divided by 255; **float**
            images must already be in [0, 1] (generators with tanh outputs: ``(x + 1) / 2``) and
            are passed unchanged. The FID Inception then resizes to 299×299 bilinearly and maps
            to [-1, 1], as pytorch-fid does; other extractors get the [0, 1] batch as it is.
        batch_size: images per forward pass (50 is pytorch-fid's default).
        device: where the model runs; default: the device of its parameters.

    Returns:
        ``pool_features`` (N, D) and ``logits`` (N, classes), or ``None`` when the model returns
        features only.
    """
    features, logits = [], []
    for batch_features, batch_logits in iter_features(model, images, batch_size, device):
        features.append(batch_features)
        if batch_logits is not None:
            logits.append(batch_logits)
    if not features:
        raise UserError("no images were given to extract features from")
    return torch.cat(features), (torch.cat(logits) if len(logits) == len(features) else None)
