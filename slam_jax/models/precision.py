"""Matmuls of a mixed-precision run: compute-dtype operands in both passes, float32 accumulation in the kernel.

A plain `jnp.einsum(..., preferred_element_type=float32)` of bf16 operands hands a float32 cotangent to the
backward pass, and its transposed dots then multiply float32 by float32 (TF32/fp32 rates on a GPU). `einsum`
here has a custom backward: the cotangent is cast to the operands' dtype and each transposed dot again takes
operands of that dtype and accumulates in float32, its result cast to the operand's dtype. Every dot asks for
a float32 result (bf16 x bf16 -> f32 is the fast path on GPUs, TPUs and XLA's CPU backend alike; bf16 x bf16 ->
bf16 ran 5x slower on a CPU here), then is cast to the dtype asked for. With float32 operands it is the
ordinary float32 einsum.

The outputs carry `checkpoint_name`s ("dense" for projections and the head, "attention" for the attention
matmuls) that the remat policies of qwen2.py select: a policy cannot see the dots inside a custom derivative.
"""

import functools
import re

import jax
import jax.numpy as jnp


def einsum(spec: str, a: jax.Array, b: jax.Array, out_dtype=None) -> jax.Array:
    """`einsum(spec, a, b)` accumulated in float32, returned in `out_dtype` (default: the operands' dtype).

    `spec` is a two-operand einsum whose indices each appear in at least two of a, b and the output (matmul
    shapes: batch, contracted and free indices).
    """
    return _einsum(spec, jnp.dtype(out_dtype or jnp.result_type(a, b)), a, b)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _einsum(spec: str, out_dtype, a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32).astype(out_dtype)


def _einsum_fwd(spec, out_dtype, a, b):
    return _einsum(spec, out_dtype, a, b), (a, b)


def _einsum_bwd(spec, out_dtype, residuals, cotangent):
    a, b = residuals
    inputs, out = spec.split("->")
    a_spec, b_spec = inputs.split(",")
    cotangent = cotangent.astype(jnp.result_type(a, b))
    grad_a = jnp.einsum(f"{out},{b_spec}->{a_spec}", cotangent, b, preferred_element_type=jnp.float32)
    grad_b = jnp.einsum(f"{a_spec},{out}->{b_spec}", a, cotangent, preferred_element_type=jnp.float32)
    return grad_a.astype(a.dtype), grad_b.astype(b.dtype)


_einsum.defvjp(_einsum_fwd, _einsum_bwd)


_INSTRUCTION = re.compile(
    r"^\s*(?:ROOT\s+)?%?(?P<name>[\w.\-]+)\s*=\s*(?P<type>.*?)\s(?P<op>[a-z][\w\-]*)\((?P<operands>.*?)\)(?P<rest>.*)$"
)
_ELEMENT_TYPE = re.compile(r"\b([a-z]+\d*)\[")
_MATMUL_OPS = ("dot", "convolution")
_GEMM_TARGETS = ("__cublas$gemm", "__cublas$lt$matmul")


def matmul_census(hlo_text: str) -> dict[str, int]:
    """Matmuls in an HLO module's text (dots, convolutions, cuBLAS gemm calls) and those with a float32 operand.

    Works on a lowered program (`jit(f).lower(...).as_text(dialect="hlo")`) and on a compiled one
    (`.compile().as_text()`, fused computations included), whether operands are printed with their shapes or
    by name only (then their types come from the instructions that define them).
    """
    element_types, matmuls = {}, []
    for line in hlo_text.splitlines():
        found = _INSTRUCTION.match(line)
        if not found:
            continue
        types = _ELEMENT_TYPE.findall(found.group("type"))
        element_types[found.group("name")] = types[0] if types else ""
        op, rest = found.group("op"), found.group("rest")
        if op in _MATMUL_OPS or (op == "custom-call" and any(name in rest for name in _GEMM_TARGETS)):
            matmuls.append(found.group("operands"))
    with_f32 = 0
    for operands in matmuls:
        types = _ELEMENT_TYPE.findall(operands)
        if not types:
            names = [part.strip().lstrip("%") for part in operands.split(",")]
            types = [element_types.get(name, "") for name in names[:2]]
        with_f32 += "f32" in types[:2]
    return {"dots": len(matmuls), "dots_with_f32_operand": with_f32}
