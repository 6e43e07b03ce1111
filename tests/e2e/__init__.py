"""End-to-end: real containerd 2.1 and 1.7, pods through CRI, the plugin as users install it.

Needs root."""
