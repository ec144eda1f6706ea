"""jaxmodels: unified multimodal models (understanding + generation) in JAX / Flax NNX."""
__version__ = "0.1.0"
