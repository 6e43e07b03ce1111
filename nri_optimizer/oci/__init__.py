"""OCI images and artifacts in registries: ``registry`` is a small client of the distribution API (pull a manifest and
blobs, push blobs and a manifest, referrers), the standard library only; ``artifacts`` attaches recorded lists to
their image. Used by ``convert``, ``push-list`` and ``pull-list``; the daemon never imports it (its ``publish`` runs
``push-list``).
"""
