"""The plugin daemon and the user commands: a containerd NRI plugin recording what containers read at start."""
