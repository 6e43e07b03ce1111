"""The tests, one folder per kind.

unit/ (pure code, per layer), server/ (the trace server on the real kernel), e2e/ (real containerd
2.1 and 1.7 through CRI), benchmarks/ (the benchmarks' quick runs)."""
