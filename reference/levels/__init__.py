"""The component registry: one ``Level`` record per component the harness compares (its built-in, handmade's
twin, its case strategy, inputs and call), read by the suite, the engine, diagnosis and the benchmarks."""
