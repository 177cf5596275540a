"""Causal self-attention over packed rows, behind one key: `model.attention` = `auto` or a kernel's name.

Every backend computes the same thing: query i of a row attends to keys j <= i of the same segment
(`segment_ids`, packed rows; padding is segment 0 and only sees itself), with grouped-query heads, softmax
statistics in float32, and a forward and a backward pass.

| name         | where            | kernel                                                                     |
|--------------|------------------|----------------------------------------------------------------------------|
| `xla`        | CPU (any device) | blocked einsum in XLA: per block of 256 queries, only the keys before it |
| `splash`     | TPU              | Pallas splash attention, causal mask and segment ids, native GQA           |
| `pallas_gpu` | GPU (Ampere+)    | Pallas flash attention (Triton) with segment ids; k/v repeated per group  |
| `cudnn`      | GPU              | cuDNN fused attention; segments as a boolean mask (a materialised bias)    |

`auto` resolves per platform with `choose` (see docs/attention.md for why). Lengths that a kernel's blocks do
not divide are padded with a segment of their own, so padded queries never touch real keys.
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name
from jax.sharding import PartitionSpec as P

from slam_jax import parallel
from slam_jax.models import config, precision

CHOICES = config.ATTENTION_BACKENDS
BACKENDS = CHOICES[1:]
XLA_BLOCK = 256  # queries per block of the einsum backend (4 blocks at the paper's 1024 context)
_PAD_SEGMENT = -1  # segment id of the positions added to reach a kernel's block multiple


def choose(platform: str, device_kind: str = "") -> str:
    """The backend `auto` means on `platform` ('cpu', 'gpu'/'cuda'/'rocm', 'tpu') and a device kind.

    TPU: splash (the only fused kernel with segment ids there). GPU: the Pallas flash kernel, which keeps
    segments apart inside the kernel on Ampere (A5000, A100) and Hopper alike; cuDNN needs a materialised
    mask for packed rows. CPU: the blocked einsum.
    """
    del device_kind  # one choice per platform today; the argument keeps the call sites ready for more
    platform = platform.lower()
    if platform == "tpu":
        return "splash"
    if platform in ("gpu", "cuda", "rocm"):
        return "pallas_gpu"
    return "xla"


def resolve(name: str, device=None) -> str:
    """`name` itself, or for `auto` the choice for `device` (default: the first local device)."""
    if name not in CHOICES:
        raise ValueError(f"model.attention={name!r} is not one of {CHOICES}")
    if name != "auto":
        return name
    device = device or jax.local_devices()[0]
    return choose(device.platform, device.device_kind)


def attention_mask(query_slots, key_slots, query_segments, key_segments) -> jax.Array:
    """[batch, 1, 1, q, k] boolean: causal by slot in the row, and only within the same segment."""
    causal = query_slots[:, :, None] >= key_slots[:, None, :]
    same_segment = query_segments[:, :, None] == key_segments[:, None, :]
    return (causal & same_segment)[:, None, None, :, :]


def sequence_mask(segment_ids) -> jax.Array:
    """`attention_mask` of a whole sequence: token i sees tokens j <= i of its own segment."""
    slots = jnp.broadcast_to(jnp.arange(segment_ids.shape[1], dtype=jnp.int32), segment_ids.shape)
    return attention_mask(slots, slots, segment_ids, segment_ids)


def grouped_attention(q, k, v, mask) -> jax.Array:
    """Softmax attention of q [b, t, heads, d] over k, v [b, s, kv_heads, d] under mask [b, 1, 1, t, s].

    The float32 scores are laid out [b, kv_heads, t, groups, s]: the order in which the q.k dot writes them
    and the probs.v dot reads them, so the t x s matrices are never transposed.
    """
    batch, length, heads, head_dim = q.shape
    kv_heads = k.shape[2]
    q = q.reshape(batch, length, kv_heads, heads // kv_heads, head_dim)
    scores = checkpoint_name(precision.einsum("btkgd,bskd->bktgs", q, k, jnp.float32), "attention")
    scores = jnp.where(mask[:, :, 0, :, None, :], scores * head_dim**-0.5, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
    out = checkpoint_name(precision.einsum("bktgs,bskd->btkgd", probs, v), "attention")
    return out.reshape(batch, length, -1)


@functools.partial(jax.checkpoint, prevent_cse=False)
def xla_attention(q, k, v, segment_ids) -> jax.Array:
    """`grouped_attention` by blocks of `XLA_BLOCK` queries, each over the keys up to its last slot only.

    The keys after a block are all masked, so skipping them gives the same result for about 5/8 of the work
    at 4 blocks. Rematerialised: the backward pass recomputes the scores rather than keeping every layer's
    float32 probabilities.
    """
    mask = sequence_mask(segment_ids)
    outputs = []
    for start in range(0, q.shape[1], XLA_BLOCK):
        end = start + XLA_BLOCK
        block_mask = mask[..., start:end, :end]
        outputs.append(grouped_attention(q[:, start:end], k[:, :end], v[:, :end], block_mask))
    return jnp.concatenate(outputs, axis=1)


def _pad_to_block(q, k, v, segment_ids, block: int):
    """q, k, v and segment ids padded along the length to a multiple of `block` (new segment: `_PAD_SEGMENT`)."""
    length = q.shape[1]
    extra = -length % block
    if not extra:
        return q, k, v, segment_ids
    widths = ((0, 0), (0, extra), (0, 0), (0, 0))
    segment_ids = jnp.pad(segment_ids, ((0, 0), (0, extra)), constant_values=_PAD_SEGMENT)
    return jnp.pad(q, widths), jnp.pad(k, widths), jnp.pad(v, widths), segment_ids


def _block_for(length: int, preferred: int, smallest: int) -> int:
    """The kernel block for a sequence: `preferred`, or the length rounded up to `smallest` when shorter."""
    return min(preferred, -(-length // smallest) * smallest)


def triton_block(length: int) -> int:
    """The Pallas/Triton block for a sequence: 128, or the next power of two (>= 16) for a shorter one. Triton
    lowers only power-of-two shapes (an 80-token prefill failed on a GPU with a block of 80)."""
    return min(128, max(16, 1 << (length - 1).bit_length()))


def splash_attention(q, k, v, segment_ids, *, interpret: bool = False) -> jax.Array:
    """Pallas splash attention (TPU): causal mask x segment ids, grouped-query heads native to the kernel."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as masks

    batch, length, heads, head_dim = q.shape
    block = _block_for(length, 512, 128)
    q, k, v, segments = _pad_to_block(q, k, v, segment_ids, block)
    padded = q.shape[1]
    mask = masks.MultiHeadMask([masks.CausalMask((padded, padded)) for _ in range(heads)])
    sizes = splash.BlockSizes(
        block_q=block,
        block_kv=block,
        block_kv_compute=block,
        block_q_dkv=block,
        block_kv_dkv=block,
        block_kv_dkv_compute=block,
        block_q_dq=block,
        block_kv_dq=block,
    )
    kernel = splash.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)
    scale = jnp.asarray(head_dim**-0.5, q.dtype)

    def one_row(q_row, k_row, v_row, segment_row):  # [t, h, d] -> [h, t, d] as the kernel takes them
        ids = splash.SegmentIds(q=segment_row, kv=segment_row)
        out = kernel((q_row * scale).swapaxes(0, 1), k_row.swapaxes(0, 1), v_row.swapaxes(0, 1), segment_ids=ids)
        return out.swapaxes(0, 1)

    out = jax.vmap(one_row)(q, k, v, segments)[:, :length]
    return out.reshape(batch, length, -1)


def pallas_gpu_attention(q, k, v, segment_ids, *, interpret: bool = False) -> jax.Array:
    """Pallas flash attention for GPUs (Triton): causal, segment ids in the kernel; k/v repeated per group."""
    from jax.experimental.pallas.ops.gpu import attention as flash

    batch, length, heads, head_dim = q.shape
    groups = heads // k.shape[2]
    block = triton_block(length)
    backward_block = min(block, 64)
    q, k, v, segments = _pad_to_block(q, k, v, segment_ids, block)
    sizes = flash.BlockSizes(
        block_q=block,
        block_k=block,
        block_q_dkv=backward_block,
        block_kv_dkv=backward_block,
        block_q_dq=backward_block,
        block_kv_dq=backward_block,
    )
    k, v = jnp.repeat(k, groups, axis=2), jnp.repeat(v, groups, axis=2)
    out = flash.mha(q, k, v, segments, sm_scale=head_dim**-0.5, causal=True, block_sizes=sizes, interpret=interpret)
    return out[:, :length].reshape(batch, length, -1)


def cudnn_attention(q, k, v, segment_ids) -> jax.Array:
    """cuDNN's fused attention, causal, with packed segments kept apart by a boolean mask."""
    batch, length = q.shape[:2]
    same_segment = (segment_ids[:, :, None] == segment_ids[:, None, :])[:, None]
    out = jax.nn.dot_product_attention(q, k, v, mask=same_segment, is_causal=True, implementation="cudnn")
    return out.reshape(batch, length, -1)


KERNELS = {  # name -> kernel(q, k, v, segment_ids[, interpret]); the registry `causal_attention` reads
    "xla": xla_attention,
    "splash": splash_attention,
    "pallas_gpu": pallas_gpu_attention,
    "cudnn": cudnn_attention,
}
_INTERPRETABLE = ("splash", "pallas_gpu")


def causal_attention(q, k, v, segment_ids, backend: str, *, interpret: bool = False) -> jax.Array:
    """Attention of a whole (packed) sequence: q [b, t, heads, d], k/v [b, t, kv_heads, d] -> [b, t, heads*d].

    `backend` is a name from `BACKENDS` (resolve `auto` first); `interpret` runs a Pallas kernel in the
    interpreter (on a CPU, for tests).
    """
    if backend not in KERNELS:
        raise ValueError(f"attention backend {backend!r} is not one of {BACKENDS} (resolve 'auto' first)")
    kernel = KERNELS[backend]
    if interpret and backend in _INTERPRETABLE:
        kernel = functools.partial(kernel, interpret=True)
    if backend == "xla":
        return kernel(q, k, v, segment_ids)
    return _per_shard(kernel, q, k, v, segment_ids)


def _per_shard(kernel, q, k, v, segment_ids) -> jax.Array:
    """`kernel` on each device's rows (and heads), under `shard_map` when a mesh is in context.

    XLA cannot partition a Pallas (Mosaic, Triton) or cuDNN call by itself; the jitted steps trace under
    their mesh (`parallel.traced_under`), so the kernel runs per shard: rows split over data x fsdp, heads
    over tensor where it divides both head counts. Without a mesh in context the kernel sees whole arrays.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return kernel(q, k, v, segment_ids)
    size = dict(mesh.shape)
    rows = tuple(axis for axis in parallel.BATCH_AXES if size.get(axis, 1) > 1)
    rows = rows if rows and q.shape[0] % int(np.prod([size[axis] for axis in rows])) == 0 else ()
    heads = size.get(parallel.TENSOR_AXIS, 1)
    head_axis = parallel.TENSOR_AXIS if heads > 1 and q.shape[2] % heads == 0 and k.shape[2] % heads == 0 else None
    if not rows and head_axis is None:
        return kernel(q, k, v, segment_ids)
    row_spec = rows or None
    qkv = P(row_spec, None, head_axis, None)
    mapped = jax.shard_map(
        kernel,
        mesh=mesh,
        in_specs=(qkv, qkv, qkv, P(row_spec, None)),
        out_specs=P(row_spec, None, head_axis),
        check_vma=False,
    )
    return mapped(q, k, v, segment_ids)


_KERNEL_NAMES = (
    re.compile(r'custom_call_target="(__cudnn\$fmha[^"]*)"'),  # cuDNN
    re.compile(r"\b(splash_mha[a-z_]*)"),  # Pallas splash (Mosaic, TPU)
    re.compile(r"\b(mha_(?:forward|backward)[a-z_]*)"),  # Pallas flash (Triton, GPU)
)


def kernel_in_program(hlo_text: str) -> str:
    """The fused attention kernels a compiled program calls (cuDNN, splash or Pallas flash; distinct names,
    sorted, comma-joined), or "none"."""
    names = {found.group(1) for pattern in _KERNEL_NAMES for found in pattern.finditer(hlo_text)}
    return ",".join(sorted(names)) or "none"
