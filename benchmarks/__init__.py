"""Benchmarks: the hand-written Transformer (and any plug-in target) against ``torch.nn.Transformer``.

Run ``python -m benchmarks --help`` (or ``parity bench --help``). Modules, one job each:

- ``presets``   model and input sizes, the cases to run
- ``workload``  the implementations, their inputs, and the step each mode times
- ``ops``       which kernels a step ran (fast path, nested tensors)
- ``flops``     FLOPs from ``torch.utils.flop_counter`` plus what it cannot see; the matmul limit
- ``timing``    interleaved rounds of ``torch.utils.benchmark.Timer`` and their statistics
- ``memory``    peak memory: CUDA allocator peak, or peak RSS of a fresh subprocess on CPU
- ``report``    the header, the ``Compare`` table, the ratio line and ``results.json``
- ``plot``      time and memory against sequence length (needs matplotlib)
- ``runner``    the loop over cases that ties these together
"""
