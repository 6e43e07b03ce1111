"""The plugin daemon and the user commands: a containerd NRI plugin that records the files each container reads as it starts."""
