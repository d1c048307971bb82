"""All-gather and reduce-scatter of large tensors in bounded memory on gloo (DeepSpeed on CPU ranks)."""

from __future__ import annotations

import functools

import torch
import torch.distributed as dist

# gloo stages a whole collective in temporaries: measured on a 400 MB tensor (the tied embedding at CINO's
# vocabulary, which ZeRO-3 gathers and reduce-scatters every step), all_gather_into_tensor +381 MB and
# reduce_scatter_tensor +571 MB on top of input and output. In pieces the same collectives cost about one piece.
# The default, 32 MiB (train.gloo_piece_mb), keeps ZeRO's buckets of a few million elements whole (and
# asynchronous, as before), and moves ~30 ms of data per piece here, far above the per-call overhead.
PIECE_BYTES = 32 * 2 ** 20


class _Done:
    """The work handle of a collective that has already completed."""

    def wait(self, timeout=None) -> bool:
        return True

    def is_completed(self) -> bool:
        return True


def _pieces(n, world, like, piece_bytes):
    """Yields (start, end, piece) over n elements per rank in steps that keep world x step elements within
    piece_bytes; piece is a contiguous (world, end - start) view of one staging tensor reused for every step."""
    step = max(1, piece_bytes // (world * like.element_size()))
    buffer = torch.empty(world * min(step, n), dtype=like.dtype, device=like.device)
    for start in range(0, n, step):
        end = min(start + step, n)
        yield start, end, buffer[:world * (end - start)].view(world, end - start)


def all_gather_into_tensor(output_tensor, input_tensor, group=None, async_op=False, *, piece_bytes=PIECE_BYTES):
    """torch.distributed.all_gather_into_tensor, with the same result; when the gathered tensor is larger than
    piece_bytes it runs synchronously in pieces of input_tensor (then a handle that is already done is returned
    for async_op)."""
    n, world = input_tensor.numel(), dist.get_world_size(group)
    if n * world * input_tensor.element_size() <= piece_bytes:
        return dist.all_gather_into_tensor(output_tensor, input_tensor, group=group, async_op=async_op)
    if not (input_tensor.is_contiguous() and output_tensor.is_contiguous()) or output_tensor.numel() != n * world:
        raise ValueError(f"all_gather_into_tensor: contiguous input ({n}) and output ({n} x {world}) expected, "
                         f"got {input_tensor.numel()} and {output_tensor.numel()} elements")
    source, out = input_tensor.view(-1), output_tensor.view(world, n)
    for start, end, piece in _pieces(n, world, input_tensor, piece_bytes):
        dist.all_gather_into_tensor(piece.view(-1), source[start:end], group=group)
        out[:, start:end].copy_(piece)
    return _Done() if async_op else None


def reduce_scatter_tensor(output_tensor, input_tensor, op=dist.ReduceOp.SUM, group=None, async_op=False, *,
                          piece_bytes=PIECE_BYTES):
    """torch.distributed.reduce_scatter_tensor, with the same result; when input_tensor is larger than
    piece_bytes it runs synchronously in pieces of output_tensor (then a handle that is already done is returned
    for async_op)."""
    n, world = output_tensor.numel(), dist.get_world_size(group)
    if input_tensor.numel() * input_tensor.element_size() <= piece_bytes:
        return dist.reduce_scatter_tensor(output_tensor, input_tensor, op=op, group=group, async_op=async_op)
    if not (input_tensor.is_contiguous() and output_tensor.is_contiguous()) or input_tensor.numel() != n * world:
        raise ValueError(f"reduce_scatter_tensor: contiguous input ({n} x {world}) and output ({n}) expected, "
                         f"got {input_tensor.numel()} and {output_tensor.numel()} elements")
    source, out = input_tensor.view(world, n), output_tensor.view(-1)
    for start, end, piece in _pieces(n, world, input_tensor, piece_bytes):
        piece.copy_(source[:, start:end])
        dist.reduce_scatter_tensor(out[start:end], piece.view(-1), op=op, group=group)
    return _Done() if async_op else None


def use_bounded_gloo_collectives(piece_bytes: int = PIECE_BYTES) -> bool:
    """Route DeepSpeed's all-gathers and reduce-scatters through the functions above, in pieces of piece_bytes,
    when its process group runs on gloo; returns whether it did (False on NCCL and other backends, which keep
    their own). Raises RuntimeError naming the DeepSpeed version if its backend no longer routes through them."""
    import deepspeed
    from deepspeed.comm import comm as ds_comm

    backend = ds_comm.cdb
    if backend is None or dist.get_backend() != "gloo":
        return False
    missing = [a for a in ("all_gather_function", "reduce_scatter_function") if not callable(getattr(backend, a, None))]
    if missing:
        raise RuntimeError(f"DeepSpeed {deepspeed.__version__}: its torch backend ({type(backend).__name__}) has no "
                           f"{', '.join(missing)}; swcm/training/gloo_collectives.py was written for DeepSpeed 0.19 "
                           "and needs updating (or set train.gloo_piece_mb=0)")
    backend.all_gather_function = functools.partial(all_gather_into_tensor, piece_bytes=piece_bytes)
    backend.reduce_scatter_function = functools.partial(reduce_scatter_tensor, piece_bytes=piece_bytes)
    return True
