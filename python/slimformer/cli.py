"""slimformer command line. `slimformer info` reports the build and the CPU paths the kernels will take."""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="slimformer", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="show the build, the CPU features and the kernel path in use")
    args = parser.parse_args(argv)
    if args.command == "info":
        import torch

        import slimformer
        from slimformer import ops
        print(f"slimformer {slimformer.__version__}, torch {torch.__version__}")
        print(f"native extension: {'yes' if ops.HAS_NATIVE else 'no'}")
        print(f"cpu: {ops.cpu_features()}; active path: {ops.cpu_isa()}")
        print(f"cuda: {'available' if torch.cuda.is_available() else 'not available'}")
        print("formats: " + ", ".join(sorted(slimformer.FORMATS)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
