"""nri-optimizer: a containerd NRI plugin that records the files each container reads as it starts."""
