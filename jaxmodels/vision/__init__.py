"""Vision encoders."""
from jaxmodels.vision.vit import VisionConfig, VisionOutput, VisionTransformer, avg_pool_tokens
