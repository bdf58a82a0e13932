"""A small classifier of the procedural shapes' known factors: the offline yardstick of sample quality.

For the procedural data the generating factors (shape, colour, size, position)
are known, so a CNN trained once to predict them gives, without any download:

- a feature space (its 128-d penultimate layer) in which the Fréchet distance
  between generated and real images plays the role FID plays with Inception;
- **mode coverage**: the share of the 96 factor combinations that appear among
  the generated images, and the KL divergence of the generated combination
  frequencies from the true (uniform) ones.

The classifier is trained on images drawn with a seed disjoint from the
training data's default, and cached under ``--classifier-cache`` (default
``$FQGAN_CACHE`` or ``~/.cache/fqgan``) as a dgm-core model folder
``factor_classifier-<key>/`` (``model.safetensors`` and a ``config.json`` holding
its recipe, held-out accuracy and version). The key covers every setting that
changes the network, and the recipe in ``config.json`` is checked on loading, so a
classifier of another recipe is never reused; an unreadable one is retrained.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dgm_core.errors import UserError
from dgm_core.pretrained import PretrainedError, load_pretrained, save_pretrained
from fqgan.data import FACTOR_NAMES, FACTOR_SIZES, images_in_model_range, make_shapes

log = logging.getLogger(__name__)

FEATURE_DIM = 128
_VERSION = 1  # bump when the architecture or the training recipe changes


def default_cache_dir() -> Path:
    return Path(os.environ.get("FQGAN_CACHE", Path.home() / ".cache" / "fqgan"))


@dataclass(frozen=True)
class ClassifierRecipe:
    """Everything that determines the trained classifier (and so its cache key)."""

    num_images: int = 16384
    data_seed: int = 7_000_001  # disjoint from fqgan-train's default data seed (0)
    steps: int = 600
    batch_size: int = 128
    lr: float = 2e-3
    seed: int = 0
    resolution: int = 32

    def key(self) -> str:
        text = json.dumps({"version": _VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


class FactorClassifier(nn.Module):
    """Image in [-1, 1] → (128-d features, one logit vector per factor)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(64 * 4 * 4, FEATURE_DIM),
            nn.ReLU(),
        )
        self.heads = nn.ModuleList(nn.Linear(FEATURE_DIM, size) for size in FACTOR_SIZES)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if images.shape[-2:] != (32, 32):
            images = F.interpolate(
                images, size=(32, 32), mode="bilinear", align_corners=False, antialias=True
            )
        features = self.body(images)
        return features, [head(features) for head in self.heads]

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
        """``(features (N, 128), predicted factors (N, 4))`` for float images in [-1, 1], in batches."""
        features, factors, _ = self.predict_with_confidence(images, batch_size)
        return features, factors

    @torch.no_grad()
    def predict_with_confidence(
        self, images: torch.Tensor, batch_size: int = 500
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`predict` plus each image's confidence (N,).

        The confidence is the smallest of its four factors' top-class probabilities.
        """
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        features, factors, confidence = [], [], []
        for start in range(0, images.shape[0], batch_size):
            chunk = images[start : start + batch_size].to(device).float()
            f, logits = self(chunk)
            features.append(f.float().cpu())  # float32 even when run under autocast
            factors.append(torch.stack([lg.argmax(1) for lg in logits], dim=1).cpu())
            top = torch.stack([lg.float().softmax(1).amax(1) for lg in logits], dim=1)
            confidence.append(top.amin(1).cpu())
        self.train(was_training)
        return torch.cat(features), torch.cat(factors), torch.cat(confidence)


def train_factor_classifier(
    recipe: ClassifierRecipe, device: torch.device | str = "cpu"
) -> tuple[FactorClassifier, dict]:
    """Train on freshly generated shapes; return the model and per-factor accuracy on 2048 held-out images."""
    torch.manual_seed(recipe.seed)
    data = make_shapes(recipe.num_images, recipe.data_seed, recipe.resolution)
    held_out = make_shapes(2048, recipe.data_seed + 1, recipe.resolution)
    model = FactorClassifier().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    generator = torch.Generator().manual_seed(recipe.seed)
    assert data.factors is not None and held_out.factors is not None
    for _ in range(recipe.steps):
        index = torch.randint(len(data), (recipe.batch_size,), generator=generator)
        images = images_in_model_range(data.images[index]).to(device)
        _, logits = model(images)
        targets = data.factors[index].to(device)
        loss = sum(F.cross_entropy(lg, targets[:, i]) for i, lg in enumerate(logits))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    _, predicted = model.predict(images_in_model_range(held_out.images))
    accuracy = {
        name: float((predicted[:, i] == held_out.factors[:, i]).float().mean())
        for i, name in enumerate(FACTOR_NAMES)
    }
    return model.eval(), accuracy


def classifier_folder(cache_dir: Path, recipe: ClassifierRecipe) -> Path:
    """Where the classifier of ``recipe`` is cached: a dgm-core model folder named by its key."""
    return cache_dir / f"factor_classifier-{recipe.key()}"


def load_factor_classifier(
    cache_dir: str | Path | None = None,
    recipe: ClassifierRecipe | None = None,
    device: torch.device | str = "cpu",
) -> tuple[FactorClassifier, dict[str, Any]]:
    """The cached classifier for ``recipe``, training and caching it first when absent or unreadable.

    Returns the model (eval mode, frozen) and its config (recipe, held-out accuracy, version).
    """
    recipe = recipe or ClassifierRecipe()
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    folder = classifier_folder(cache_dir, recipe)
    expected = {"recipe": asdict(recipe), "version": _VERSION}
    if folder.exists():
        try:
            model, config = load_pretrained(folder, FactorClassifier(), device=device)
        except PretrainedError as error:
            log.warning("cached factor classifier %s is unreadable (%s); retraining it", folder, error)
        else:
            if all(config.get(key) == value for key, value in expected.items()):
                return model.eval().requires_grad_(False), config
            # The key is a hash of the recipe: a folder holding another recipe was copied or edited.
            log.warning("cached factor classifier %s was trained with another recipe; retraining it", folder)
    log.info("training the factor classifier once (cached in %s)", cache_dir)
    model, accuracy = train_factor_classifier(recipe, device)
    config = {**expected, "held_out_accuracy": accuracy}
    try:
        save_pretrained(folder, model, config)
    except OSError as error:
        raise UserError(f"cannot write the factor-classifier cache in {cache_dir}: {error}") from None
    return model.to(device).eval().requires_grad_(False), config
