"""What a prefetch list buys, measured against the fastest start the link allows: ``nri-optimizer bench-image``.

For each image of a YAML config (the seed's shape: ``registry``, ``insecure_registry``, ``images: [{name, arg,
ready}]``), each variant (snapshotter x image tag x how the list is used) and each link setting, it pulls, creates and
runs the image through CRI on a private containerd (or a node's own), N rounds interleaved with full cleanup in
between, and reports medians and spreads against the bound as tables, CSV, JSON and a PNG per image and link.
``bench-image convert`` builds the nydus variants' images (nri-optimizer convert's built-in converter).

Modules: config (the YAML), workloads and apps (images built offline), registry (what a pull fetches; the registry on
loopback is testbed.registry), shaping (the registry's link: rate on lo through netlink, round trip by a delay line),
variants (what can run here), prepare (push, lists, conversions), convert (the nydus variants' images), snapshotter
(the nydus-snapshotter a variant runs on: nydusd's counters, the runtime list), handlers (CRI pulls and pods on a
runtime handler), timing (one repetition's clock and its "ready"), runner (a repetition and its cleanup), bench (the
whole run), bounds (the fastest start), lists (nydusd's list against ours), report, plot and progress (outputs),
command (the CLI). The nydus variants' private nydus-snapshotters are testbed.nydus. Runs from a source checkout
(``make bench-image``).
"""
