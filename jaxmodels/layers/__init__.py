"""Shared building blocks, written once and used by every tower."""
from jaxmodels.layers.activations import get_activation
from jaxmodels.layers.attention import Attention, dot_product_attention, make_attention_mask
from jaxmodels.layers.block import BlockStack, TransformerBlock
from jaxmodels.layers.embed import Embed, splice_image_tokens
from jaxmodels.layers.linear import Linear, param
from jaxmodels.layers.mlp import MLP, GatedMLP
from jaxmodels.layers.norms import LayerNorm, RMSNorm, make_norm
from jaxmodels.layers.rotary import apply_rope, rope_cos_sin, rope_inv_freq
