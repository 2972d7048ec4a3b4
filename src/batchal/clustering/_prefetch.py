"""A software prefetch for numba kernels (LLVM's ``llvm.prefetch``).

Why hand-written: numba exposes no prefetch, and the graph HAC's visits read
the vector sums of a list's neighbours at random; at 10M rows those rows are
outside every cache, and asking for them a list ahead lets the reads overlap.
"""
from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


@intrinsic
def prefetch_row(typingctx, arr, row):
    """Prefetch every 64-byte line of ``arr[row]`` (a C-contiguous 2-d array; a 1-d array: the element)."""
    sig = types.void(arr, row)

    def codegen(context, builder, signature, args):
        aryty, idxty = signature.args
        ary = context.make_array(aryty)(context, builder, args[0])
        idx = context.cast(builder, args[1], idxty, types.intp)
        zero = context.get_constant(types.intp, 0)
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [idx] + [zero] * (aryty.ndim - 1),
                                       wraparound=False)
        i8p = builder.bitcast(ptr, ir.IntType(8).as_pointer())
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p.type, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        if aryty.ndim == 2:
            nbytes = cgutils.unpack_tuple(builder, ary.strides, 2)[0]
        else:
            nbytes = context.get_constant(types.intp, 1)
        step = context.get_constant(types.intp, 64)
        with cgutils.for_range_slice(builder, zero, nbytes, step) as (off, _):
            # read, keep in all cache levels, data cache
            builder.call(fn, [builder.gep(i8p, [off]), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return sig, codegen
