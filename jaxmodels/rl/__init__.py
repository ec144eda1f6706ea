"""Reinforcement learning for image generation: GRPO (grpo.py) and reward plug-ins (rewards.py)."""
