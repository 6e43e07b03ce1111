"""What a prefetch list buys, measured as pull, create and run times: ``nri-optimizer bench-image``.

For each image of a YAML config (the seed's shape: ``registry``, ``insecure_registry``, ``images: [{name, arg,
ready}]``) and each variant (snapshotter x image tag), it pulls, creates and runs the image through CRI on a private
containerd, N times with full cleanup in between, and reports medians and spreads as a table, CSV, JSON and a PNG per
image. ``bench-image convert`` builds the nydus variants' images (nri-optimizer convert's built-in converter).

Modules: config (the YAML), workloads (images built offline), registry (what a pull fetches; the registry on loopback is
testbed.registry), throttle (tc on lo), variants (what can run here), handlers (CRI pulls and pods on a runtime
handler), timing (one repetition's clock and its "ready"), runner (a repetition and its cleanup), bench (the whole run),
report, plot and progress (outputs), convert (the nydus variants' images), command (the CLI). The nydus variants'
private nydus-snapshotters are testbed.nydus. Runs from a source checkout (``make bench-image``).
"""
