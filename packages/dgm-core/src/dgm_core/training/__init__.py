"""The scaffolding every training CLI shares, so each package's train step stays short.

``run.py`` holds :class:`TrainingRun` (process group, device, precision, run directory, logs,
checkpoint cadence); ``resume.py`` chooses and checks the checkpoint to continue from;
``config.py`` the options every training CLI shares; ``faults.py`` the test-only crash hook.
"""

from dgm_core.inference import RuntimeConfig
from dgm_core.training.config import TrainingConfig
from dgm_core.training.run import RunPreempted, TrainingDiverged, TrainingRun

__all__ = ["RunPreempted", "RuntimeConfig", "TrainingConfig", "TrainingDiverged", "TrainingRun"]
