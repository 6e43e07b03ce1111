"""Unit tests of pure code, one folder per layer of nri_optimizer."""
