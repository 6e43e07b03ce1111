"""Tools around the product, not part of the daemon: what tracing costs (cost/) and what a prefetch list
buys (prefetch/), with their shared progress line."""
