"""``python -m ipcmagic kernel install --name NAME``: see :mod:`ipcmagic.kernel`."""

from __future__ import annotations

import argparse

from .kernel import KernelInstallError, install
from .version import __version__


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ipcmagic")
    parser.add_argument("--version", action="version", version=f"ipcmagic {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    kernel = commands.add_parser("kernel", help="Jupyter kernels").add_subparsers(
        dest="action", required=True
    )
    add = kernel.add_parser(
        "install",
        help="Install a Jupyter kernel for this Python environment (venv PATH, VIRTUAL_ENV, PYTHONPATH).",
    )
    add.add_argument("--name", required=True, help="Kernel name, e.g. the environment's.")
    add.add_argument("--display-name", help="Name shown in Jupyter (default: --name).")
    where = add.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true", help="For this user (the default).")
    where.add_argument("--prefix", help="Under this prefix instead, e.g. a shared project directory.")
    add.add_argument(
        "--prepend-site-packages",
        action="store_true",
        help="Put this environment's site-packages first on PYTHONPATH, so its packages win over "
        "copies on the software stack's PYTHONPATH (uenv, modules).",
    )
    add.add_argument("--replace", action="store_true", help="Replace a kernel of that name.")
    args = parser.parse_args(argv)
    try:
        path = install(
            args.name,
            display_name=args.display_name,
            prefix=args.prefix,
            prepend_site_packages=args.prepend_site_packages,
            replace=args.replace,
        )
    except KernelInstallError as e:
        add.error(str(e))
    print(f"Installed kernel {args.name!r} in {path}")


if __name__ == "__main__":
    main()
