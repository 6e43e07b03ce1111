"""The trace server: one resident process that watches containers' root mounts with fanotify.

It watches every traced container's root mount with fanotify
(marked through /proc/PID/root, never entering a namespace) and reports each file once to the plugin."""
