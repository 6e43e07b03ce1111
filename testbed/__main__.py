"""`python -m testbed fetch`: fill the testbed cache, so later runs need no network.
`python -m testbed tools`: install the nydus tool chain into the cache (what `make nydus` runs; testbed.toolchain).
`python -m testbed demo`: what `make demo` runs."""

from __future__ import annotations

import argparse
import sys

from testbed import TestbedError, debs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testbed")
    commands = parser.add_subparsers(dest="command", required=True)
    fetch = commands.add_parser("fetch", help="download containerd, runc, busybox and CNI plugins into the cache")
    fetch.add_argument(
        "flavours", nargs="*", default=sorted(debs.CONTAINERD_FLAVOURS), help="containerd flavours (default: all)"
    )
    commands.add_parser(
        "tools",
        help="install nydusd, nydus-image, crictl, containerd-nydus-grpc, "
        "docker-registry and the referrers registry into the cache (the first time builds nydus-rs "
        "with cargo: minutes)",
    )
    commands.add_parser("demo", help="profile a demo image on a private containerd, then tear it down")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from testbed.demo import run_demo

        return run_demo()
    if args.command == "tools":
        return _tools()
    try:
        for flavour in args.flavours:
            runtime = debs.fetch_runtime(flavour)
            print(f"containerd {runtime.deb_version} + runc {runtime.runc_version}: {runtime.bin_dir}")
        print(f"busybox-static: {debs.busybox_path()}")
        print(f"containernetworking-plugins: {debs.cni_plugins()}")
    except TestbedError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"cache: {debs.cache_dir()}")
    return 0


def _tools() -> int:
    from testbed import toolchain

    try:
        tools = toolchain.install()
    except TestbedError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for installed in (tools.nydus_rs, tools.crictl, tools.referrers_registry):
        built = f" (built in {installed.seconds:.0f} s)" if installed.seconds is not None else ""
        print(f"{installed.name}: {installed.bin_dir}{built}")
    print(f"containerd-nydus-grpc: {tools.snapshotter}")
    print(f"docker-registry: {tools.registry}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
