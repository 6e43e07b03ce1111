"""What tracing costs and what a list buys: tools around the product, not part of the daemon.

What tracing costs (cost/) and what a prefetch list
buys (prefetch/), with their shared progress line."""
