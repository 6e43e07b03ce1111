"""A CRI client (grpcio and the CRI stubs, the [profile] extra) for the commands that start containers."""
