"""Transformer building blocks: RMSNorm, SwiGLU, attention (RoPE, QKNorm, soft-cap, GQA, masks)
and the space-time transformer shared by the tokenizer and the dynamics model."""

from dreamer4.nn.attention import Attention, group_mask
from dreamer4.nn.mlp import SwiGLU
from dreamer4.nn.norm import RMSNorm
from dreamer4.nn.transformer import KVCache, SpaceTimeTransformer, TransformerConfig

__all__ = [
    "Attention",
    "KVCache",
    "RMSNorm",
    "SpaceTimeTransformer",
    "SwiGLU",
    "TransformerConfig",
    "group_mask",
]
