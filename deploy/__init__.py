"""Install, launch and deploy: make install-optimizer (install.py), the launchers (launcher.py), the
DaemonSet and its image. Runs from a source checkout."""
