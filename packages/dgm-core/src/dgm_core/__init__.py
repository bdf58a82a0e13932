"""dgm-core: the shared runtime of the dgm model packages.

Device handling, mixed precision, torchrun/DDP, checkpoints, logging, the
dataclass-driven CLI layer, metrics and the feature-quantization op live here
and only here; the model packages (fqgan, optimus, prevalent) build on them.
"""

from dgm_core.errors import UserError

__version__ = "0.1.0"

__all__ = ["UserError", "__version__"]
