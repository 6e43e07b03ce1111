"""What tracing costs a workload and the node: `make bench` (`python -m benchmarks.cost`; `--quick` for CI).

Runs every scenario with no plugin, with ours and, given the paths to its plugin and server, with
upstream's, interleaved; prints medians, p90 and spreads, checks the targets, writes JSON and a PNG.
See scenarios.py for the scenarios and __main__.py for the options.
"""
