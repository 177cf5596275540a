"""Matmuls of a mixed-precision run: compute-dtype operands in both passes, float32 accumulation in the kernel.

A plain `jnp.einsum(..., preferred_element_type=float32)` of bf16 operands hands a float32 cotangent to the
backward pass, and its transposed dots then multiply float32 by float32 (TF32/fp32 rates on a GPU). Two
helpers keep every dot of a bf16 run in bf16:

- `matmul_einsum`: the result in the operands' dtype (the kernel accumulates in float32 on GPUs and TPUs, and
  XLA's CPU backend upcasts bf16 dots), so the cotangent and the transposed dots are bf16 too;
- `einsum_f32`: a float32 result (attention scores, logits: softmax statistics and the loss stay float32)
  whose backward casts the cotangent to the operands' dtype before the transposed dots.

With float32 operands both are the ordinary float32 einsum.
"""

import functools
import re

import jax
import jax.numpy as jnp


def matmul_einsum(spec: str, a: jax.Array, b: jax.Array) -> jax.Array:
    """`einsum(spec, a, b)` in the operands' common dtype."""
    dtype = jnp.result_type(a, b)
    return jnp.einsum(spec, a, b, preferred_element_type=dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def einsum_f32(spec: str, a: jax.Array, b: jax.Array) -> jax.Array:
    """`einsum(spec, a, b)` with a float32 result; the backward pass multiplies in the operands' dtype."""
    return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32)


def _einsum_f32_fwd(spec, a, b):
    return einsum_f32(spec, a, b), (a, b)


def _einsum_f32_bwd(spec, residuals, cotangent):
    a, b = residuals
    _, vjp = jax.vjp(functools.partial(matmul_einsum, spec), a, b)
    grad_a, grad_b = vjp(cotangent.astype(jnp.result_type(a, b)))
    return grad_a.astype(a.dtype), grad_b.astype(b.dtype)


einsum_f32.defvjp(_einsum_f32_fwd, _einsum_f32_bwd)


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
