"""The tail of an mlpconv block as one Pallas TPU kernel: bias, ReLU, two 1x1 layers.

``tail(y, b0, w1, b1, w2, b2) = relu(relu(relu(y + b0) @ w1 + b1) @ w2 + b2)`` per pixel,
where ``y`` is the block's k x k convolution without its bias. Why a kernel: on a TPU the
train step is bound by HBM traffic, and layer by layer XLA writes each ReLU's output
and each 1x1 layer's pre-activation to HBM in the forward pass and reads them back in
the backward pass. Here the forward kernel reads ``y`` and writes the block's output
only; the backward kernel reads ``y`` and the output's gradient, recomputes the
activations in VMEM and writes ``y``'s gradient and the six parameters' gradients
(float32, accumulated over the grid). Recomputing two small matmuls costs less than
reading their activations back on a memory-bound chip (docs/PERFORMANCE.md, "HBM
traffic of the train step").

Layout: (pixels, channels, batch). XLA's TPU convolutions keep the batch in the
minor (lane) dimension, so this layout costs no copies next to them, and the
matmuls are (channels_out, channels_in) x (channels_in, batch) on the MXU. Each grid
step takes up to ``MAX_PIXELS_PER_STEP`` pixels (a divisor of H*W) of every image of
the shard. ``interpret=True`` runs the same kernels through Pallas's interpreter on
any backend (the tests, on CPU).
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.sharding import PartitionSpec as P

MAX_PIXELS_PER_STEP = 8


def pixels_per_step(num_pixels: int) -> int:
    return max(d for d in range(1, MAX_PIXELS_PER_STEP + 1) if num_pixels % d == 0)


def _dot(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.dot(a, b, preferred_element_type=jnp.float32)


def _dot_t(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a @ b.T`` accumulated in float32."""
    dims = (((1,), (1,)), ((), ()))
    return jax.lax.dot_general(a, b, dims, preferred_element_type=jnp.float32)


def _forward_kernel(y_ref, b0_ref, w1t_ref, b1_ref, w2t_ref, b2_ref, out_ref):
    dtype = y_ref.dtype

    def pixel(p, carry):
        a = jnp.maximum(y_ref[p].astype(jnp.float32) + b0_ref[...], 0).astype(dtype)
        h = jnp.maximum(_dot(w1t_ref[...], a) + b1_ref[...], 0).astype(dtype)
        out_ref[p] = jnp.maximum(_dot(w2t_ref[...], h) + b2_ref[...], 0).astype(out_ref.dtype)
        return carry

    jax.lax.fori_loop(0, y_ref.shape[0], pixel, 0)


def _backward_kernel(
    y_ref, g_ref, b0_ref, w1t_ref, w1_ref, b1_ref, w2t_ref, w2_ref, b2_ref,
    dy_ref, db0_ref, dw1t_ref, db1_ref, dw2t_ref, db2_ref,
):  # fmt: skip
    @pl.when(pl.program_id(0) == 0)
    def _():
        for ref in (db0_ref, dw1t_ref, db1_ref, dw2t_ref, db2_ref):
            ref[...] = jnp.zeros_like(ref)

    dtype = y_ref.dtype

    def pixel(p, carry):
        pre = y_ref[p].astype(jnp.float32) + b0_ref[...]
        a = jnp.maximum(pre, 0).astype(dtype)
        h_pre = _dot(w1t_ref[...], a) + b1_ref[...]
        h = jnp.maximum(h_pre, 0).astype(dtype)
        z = _dot(w2t_ref[...], h) + b2_ref[...]
        gz = jnp.where(z > 0, g_ref[p].astype(jnp.float32), 0.0)
        dw2t_ref[...] += _dot_t(gz.astype(dtype), h)
        db2_ref[...] += jnp.sum(gz, axis=1, keepdims=True)
        gh = jnp.where(h_pre > 0, _dot(w2_ref[...], gz.astype(dtype)), 0.0)
        dw1t_ref[...] += _dot_t(gh.astype(dtype), a)
        db1_ref[...] += jnp.sum(gh, axis=1, keepdims=True)
        ga = jnp.where(pre > 0, _dot(w1_ref[...], gh.astype(dtype)), 0.0)
        db0_ref[...] += jnp.sum(ga, axis=1, keepdims=True)
        dy_ref[p] = ga.astype(dy_ref.dtype)
        return carry

    jax.lax.fori_loop(0, y_ref.shape[0], pixel, 0)


def _whole(shape: tuple[int, ...]) -> pl.BlockSpec:
    return pl.BlockSpec(shape, lambda i: (0,) * len(shape))


def _pixels(step: int, channels: int, batch: int) -> pl.BlockSpec:
    return pl.BlockSpec((step, channels, batch), lambda i: (i, 0, 0))


def _column(v: jax.Array) -> jax.Array:
    return v.astype(jnp.float32).reshape(-1, 1)


def _nbytes(*arrays) -> int:
    return sum(a.size * jnp.dtype(a.dtype).itemsize for a in arrays)


def _forward(y, b0, w1, b1, w2, b2, interpret: bool) -> jax.Array:
    s, c, n = y.shape
    o1, o2 = w1.shape[1], w2.shape[1]
    step = pixels_per_step(s)
    args = (y, _column(b0), w1.T, _column(b1), w2.T, _column(b2))
    out = jax.ShapeDtypeStruct((s, o2, n), y.dtype)
    return pl.pallas_call(
        _forward_kernel,
        out_shape=out,
        grid=(s // step,),
        in_specs=[_pixels(step, c, n), *(_whole(a.shape) for a in args[1:])],
        out_specs=_pixels(step, o2, n),
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel",)),
        # What XLA's cost analysis counts for the kernel: its matmuls, and its operands
        # and output read and written once.
        cost_estimate=pl.CostEstimate(
            flops=2 * s * n * (c * o1 + o1 * o2),
            transcendentals=0,
            bytes_accessed=_nbytes(*args, out),
        ),
        interpret=interpret,
    )(*args)


def _backward(y, g, b0, w1, b1, w2, b2, interpret: bool) -> tuple[jax.Array, ...]:
    s, c, n = y.shape
    o1, o2 = w1.shape[1], w2.shape[1]
    step = pixels_per_step(s)
    f32 = jnp.float32
    args = (y, g, _column(b0), w1.T, w1, _column(b1), w2.T, w2, _column(b2))
    outs = (
        jax.ShapeDtypeStruct((s, c, n), y.dtype),
        *(jax.ShapeDtypeStruct(shape, f32) for shape in ((c, 1), (o1, c), (o1, 1))),
        *(jax.ShapeDtypeStruct(shape, f32) for shape in ((o2, o1), (o2, 1))),
    )
    return pl.pallas_call(
        _backward_kernel,
        out_shape=outs,
        grid=(s // step,),
        in_specs=[_pixels(step, c, n), _pixels(step, o2, n), *(_whole(a.shape) for a in args[2:])],
        out_specs=(_pixels(step, c, n), *(_whole(o.shape) for o in outs[1:])),
        # The parameters' gradients accumulate over the grid: its steps run in order.
        compiler_params=pltpu.CompilerParams(dimension_semantics=("arbitrary",)),
        cost_estimate=pl.CostEstimate(
            flops=2 * s * n * 3 * (c * o1 + o1 * o2),  # the two recomputed, four for gradients
            transcendentals=0,
            bytes_accessed=_nbytes(*args, *outs),
        ),
        interpret=interpret,
    )(*args)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def tail_scn(y, b0, w1, b1, w2, b2, interpret=False):
    """``tail`` on ``y`` of layout (pixels, channels, batch); the output has that layout."""
    return _forward(y, b0, w1, b1, w2, b2, interpret)


def _tail_forward(y, b0, w1, b1, w2, b2, interpret):
    return _forward(y, b0, w1, b1, w2, b2, interpret), (y, b0, w1, b1, w2, b2)


def _tail_backward(interpret, residuals, g):
    y, b0, w1, b1, w2, b2 = residuals
    dy, db0, dw1t, db1, dw2t, db2 = _backward(y, g, b0, w1, b1, w2, b2, interpret)
    return (
        dy,
        db0[:, 0].astype(b0.dtype),
        dw1t.T.astype(w1.dtype),
        db1[:, 0].astype(b1.dtype),
        dw2t.T.astype(w2.dtype),
        db2[:, 0].astype(b2.dtype),
    )


tail_scn.defvjp(_tail_forward, _tail_backward)


def _tail_nhwc(y, b0, w1, b1, w2, b2, interpret: bool) -> jax.Array:
    n, h, w, c = y.shape
    scn = y.transpose(1, 2, 3, 0).reshape(h * w, c, n)
    out = tail_scn(scn, b0, w1, b1, w2, b2, interpret)
    return out.reshape(h, w, -1, n).transpose(3, 0, 1, 2)


def tail(
    y: jax.Array,
    b0: jax.Array,
    w1: jax.Array,
    b1: jax.Array,
    w2: jax.Array,
    b2: jax.Array,
    interpret: bool = False,
) -> jax.Array:
    """``relu(relu(relu(y + b0) @ w1 + b1) @ w2 + b2)`` for NHWC ``y``; w1 and w2 are
    (in, out) matrices, the biases vectors, all of ``y``'s dtype.

    Under a mesh with a 'data' axis (``jax.sharding.get_abstract_mesh``: the steps of
    ``nin_jax.steps`` trace under theirs) each device runs the kernels on its shard of
    the batch (``jax.shard_map``): the SPMD partitioner cannot split a custom call.
    """
    run = functools.partial(_tail_nhwc, interpret=interpret)
    mesh = jax.sharding.get_abstract_mesh()
    if "data" in mesh.axis_names and mesh.shape["data"] > 1:
        replicated = (P(),) * 5
        run = jax.shard_map(
            run, mesh=mesh, in_specs=(P("data"), *replicated), out_specs=P("data"), check_vma=False
        )
    return run(y, b0, w1, b1, w2, b2)


def reference(y, b0, w1, b1, w2, b2) -> jax.Array:
    """What ``tail`` computes, in XLA's ops."""
    return jax.nn.relu(jax.nn.relu(jax.nn.relu(y + b0) @ w1 + b1) @ w2 + b2)
