"""OCI images in registries: ``registry`` is a small client of the distribution API (pull a manifest and blobs,
push blobs and a manifest), the standard library only. Used by ``nri-optimizer convert``; the daemon never
imports it.
"""
