"""Building nydus images ourselves (nydus-image 2.2.0; nydusify cannot be installed), the listed files first.

    tarorder    reorder a layer tar: the listed files first, in list order, every entry byte for byte (no I/O
                beyond the file objects it is given)
    tool        find nydus-image (PATH, then `make nydus`'s cache) and run it
    build       layer tars -> one blob and one bootstrap per layer -> the image's bootstrap (merge), prefetch
                table in list order
    bootstrap   read a bootstrap back: its prefetch table, every inode's chunks and where they are in the blob
    image       the OCI image nydus-snapshotter 0.13.4 runs: blob layers, the bootstrap layer, config, manifest
    daemon      a running nydusd through its API socket: metrics, and the files it saw read (its access pattern)

Imports go one way: errors <- tarorder, tool <- build <- image (which takes the media types from
nri_optimizer.oci.registry); bootstrap uses tool; daemon stands alone. Nothing here imports the test bed, the
benchmarks or the tests.
"""
