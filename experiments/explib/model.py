"""A small decoder-only transformer in pure JAX (no flax).

Pre-norm blocks (RMSNorm, causal multi-head attention with rotary position
embeddings, GELU MLP), layers stacked along a leading axis and run with
`lax.scan`, so compile time does not grow with depth. Rotary embeddings
carry only relative positions, so the model can be evaluated on sequences
longer than it was trained on (the length-generalisation question).

`prefill` and `decode_step` run the same model one token at a time with a
key/value cache (greedy decoding, `explib.decode`); their logits equal
`forward`'s on the same tokens.

Dimensions: `B` batch, `T` tokens, `D` model width, `L` layers, `H` heads,
`Dh` head width, `F` MLP width, `V` vocabulary (64), `C` cache length.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp

import tinyvm_jax


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  d_model: int = 64
  n_layers: int = 2
  n_heads: int = 4
  d_ff: int = 256
  vocab: int = tinyvm_jax.VOCAB_SIZE
  rope_base: float = 10_000.0

  def __post_init__(self):
    for name in ("d_model", "n_layers", "n_heads", "d_ff", "vocab"):
      v = getattr(self, name)
      if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    if self.d_model % (2 * self.n_heads):
      raise ValueError(f"d_model={self.d_model} must be a multiple of "
                       f"2 * n_heads={2 * self.n_heads} (rotary pairs)")

  @property
  def d_head(self) -> int:
    return self.d_model // self.n_heads


def init(key: jax.Array, cfg: ModelConfig) -> dict:
  """Random parameters (key consumed): a pytree of float32 arrays."""
  d, f, l, v = cfg.d_model, cfg.d_ff, cfg.n_layers, cfg.vocab
  k = jax.random.split(key, 6)
  normal = lambda key, shape, fan_in: (
      jax.random.normal(key, shape, jnp.float32) / math.sqrt(fan_in))
  # residual-branch outputs scaled down with depth (GPT-2 style)
  out_scale = 1 / math.sqrt(2 * l)
  return {
      "embed": jax.random.normal(k[0], (v, d), jnp.float32),
      "blocks": {
          "norm1": jnp.ones((l, d)),                            # [L, D]
          "wqkv": normal(k[1], (l, d, 3 * d), d),               # [L, D, 3D]
          "wo": normal(k[2], (l, d, d), d) * out_scale,         # [L, D, D]
          "norm2": jnp.ones((l, d)),                            # [L, D]
          "w1": normal(k[3], (l, d, f), d),                     # [L, D, F]
          "w2": normal(k[4], (l, f, d), f) * out_scale,         # [L, F, D]
      },
      "norm_f": jnp.ones((d,)),                                 # [D]
      "head": normal(k[5], (d, v), d),                          # [D, V]
  }


def num_params(params: dict) -> int:
  return sum(int(x.size) for x in jax.tree_util.tree_leaves(params))


def _rms_norm(x, scale):
  return x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + 1e-6) * scale


def _rope(x, positions, base):
  """Rotary embedding of [B, T, H, Dh] queries or keys at `positions`
  ([T] or [B, T])."""
  dh = x.shape[-1]
  freq = base ** (-jnp.arange(0, dh, 2, dtype=jnp.float32) / dh)  # [Dh/2]
  angle = positions.astype(jnp.float32)[..., None] * freq       # [.., T, Dh/2]
  cos, sin = jnp.cos(angle)[..., None, :], jnp.sin(angle)[..., None, :]
  x1, x2 = x[..., 0::2], x[..., 1::2]
  out = jnp.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1)
  return out.reshape(x.shape)


def _qkv(cfg: ModelConfig, x, p, positions):
  """Rotated queries and keys, and values, [B, T, H, Dh] each."""
  b, t, _ = x.shape
  h = _rms_norm(x, p["norm1"])
  q, k, v = jnp.split(h @ p["wqkv"], 3, axis=-1)
  shape = (b, t, cfg.n_heads, cfg.d_head)
  return (_rope(q.reshape(shape), positions, cfg.rope_base),
          _rope(k.reshape(shape), positions, cfg.rope_base), v.reshape(shape))


def _finish(cfg: ModelConfig, x, p, q, k, v, visible):
  """Attention of [B, T, ..] queries over [B, C, ..] keys where `visible`
  ([T, C] or [B, T, C] bool), then the MLP; returns the new [B, T, D]."""
  b, t, d = x.shape
  scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(cfg.d_head)
  visible = visible if visible.ndim == 3 else visible[None]
  scores = jnp.where(visible[:, None], scores, -1e30)
  attn = jax.nn.softmax(scores, axis=-1)
  o = jnp.einsum("bhqk,bkhd->bqhd", attn, v).reshape(b, t, d)
  x = x + o @ p["wo"]
  h = _rms_norm(x, p["norm2"])
  return x + jax.nn.gelu(h @ p["w1"]) @ p["w2"]


def _block(cfg: ModelConfig, x, p):
  """One pre-norm block on [B, T, D]; also returns its keys and values."""
  t = x.shape[1]
  q, k, v = _qkv(cfg, x, p, jnp.arange(t))
  causal = jnp.tril(jnp.ones((t, t), bool))
  return _finish(cfg, x, p, q, k, v, causal), (k, v)


def forward(params: dict, ids: jax.Array, cfg: ModelConfig
            ) -> tuple[jax.Array, jax.Array]:
  """Logits and the residual stream of every layer.

  Args:
    params: from `init`.
    ids: [B, T] int32 token ids.
    cfg: the model's configuration (static).

  Returns:
    logits [B, T, V] float32 (position t predicts token t + 1), and
    resid [L + 1, B, T, D]: the residual stream after the embedding
    (index 0) and after each block.
  """
  logits, resid, _ = _forward(params, ids, cfg)
  return logits, resid


def _forward(params, ids, cfg):
  if ids.ndim != 2:
    raise ValueError(f"ids must be [B, T], got shape {ids.shape}")
  x = params["embed"][ids]                                          # [B, T, D]

  def layer(x, p):
    y, kv = _block(cfg, x, p)
    return y, (y, kv)

  x, (resid, kv) = jax.lax.scan(layer, x, params["blocks"])
  resid = jnp.concatenate([params["embed"][ids][None], resid])
  logits = _rms_norm(x, params["norm_f"]) @ params["head"]
  return logits, resid, kv


def prefill(params: dict, ids: jax.Array, cfg: ModelConfig, cache_len: int
            ) -> tuple[jax.Array, dict]:
  """`forward` on [B, T] ids, keeping every layer's keys and values.

  Returns:
    logits [B, T, V] and the cache {"k", "v": [L, B, C, H, Dh]}, C =
    `cache_len` >= T, positions T.. zero.
  """
  t = ids.shape[1]
  if cache_len < t:
    raise ValueError(f"cache_len={cache_len} < {t} tokens")
  logits, _, (k, v) = _forward(params, ids, cfg)
  pad = ((0, 0), (0, 0), (0, cache_len - t), (0, 0), (0, 0))
  return logits, {"k": jnp.pad(k, pad), "v": jnp.pad(v, pad)}


def decode_step(params: dict, cache: dict, token: jax.Array,
                pos: jax.Array, cfg: ModelConfig) -> tuple[jax.Array, dict]:
  """One token per row at its own position, attending to cache positions
  <= `pos`.

  Args:
    params: from `init`.
    cache: from `prefill` (or a previous step).
    token: [B] int32, the token at `pos`.
    pos: [B] int32 positions (< C); the cache at `pos` is overwritten.
    cfg: the model's configuration (static).

  Returns:
    logits [B, V] (predicting the token at pos + 1) and the updated cache.
  """
  b, c = token.shape[0], cache["k"].shape[2]
  x = params["embed"][token][:, None]                               # [B, 1, D]
  visible = (jnp.arange(c)[None, :] <= pos[:, None])[:, None]       # [B, 1, C]
  rows = jnp.arange(b)
  k_all, v_all = cache["k"], cache["v"]
  # a Python loop over layers, so each layer writes one position of the
  # cache in place (a scatter) instead of producing a new cache
  for layer in range(cfg.n_layers):
    p = jax.tree_util.tree_map(lambda w: w[layer], params["blocks"])
    q, k, v = _qkv(cfg, x, p, pos[:, None])
    k_all = k_all.at[layer, rows, pos].set(k[:, 0])
    v_all = v_all.at[layer, rows, pos].set(v[:, 0])
    x = _finish(cfg, x, p, q, k_all[layer], v_all[layer], visible)
  logits = _rms_norm(x[:, 0], params["norm_f"]) @ params["head"]
  return logits, {"k": k_all, "v": v_all}
