"""Unified understanding + generation models (see `model.py` for the composition)."""
from jaxmodels.unified.config import UnifiedConfig
from jaxmodels.unified.model import Projector, UnifiedModel
from jaxmodels.unified.released import ReleasedModel, from_pretrained  # noqa: E402  (after the model)
