"""The benchmarks: their units, and quick runs that produce every figure (no timing asserts)."""
