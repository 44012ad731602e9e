"""The stand-in's container runtime (what enroot is to pyxis): builds a task's container root.

Called by the SPANK plugin (spank_pyxis.c) as root, in the task's own new mount namespace, before
the task enters the root with chroot. Builds, under RUNTIME (a tmpfs here, gone with the namespace):

- the image, a root filesystem directory, as an overlay with a fresh writable layer (read-only
  again at the end unless the EDF says ``writable = true`` or ``--container-writable``);
- the host's ``/usr`` read-only, the image's own ``/usr/local`` over it (so the image's Python
  packages and programs are the image's, and the host's Python has none of them);
- ``/proc``, ``/dev``, ``/sys``, the host's user, group and host names, the system mounts of the
  plugin's configuration (the munge socket, as a site's enroot configuration mounts it);
- the EDF's ``mounts`` and ``--container-mounts`` (``SRC[:DST[:ro]]``), each source must exist.

Prints what the plugin applies: ``env NAME=VALUE`` lines (the image's ``/etc/environment`` over the
caller's variables, then the EDF's ``[env]``, then the enroot PyTorch hook's ``RANK``, ``LOCAL_RANK``,
``WORLD_SIZE`` where the image sets ``PYTORCH_VERSION``), and ``workdir DIR``. Errors: one line on
stderr, exit status 1.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import pwd
import re
import sys
import tomllib
from pathlib import Path

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC = 1, 2, 4, 32, 4096, 16384
HOST_FILES = ("/etc/passwd", "/etc/group", "/etc/hosts", "/etc/resolv.conf", "/etc/nsswitch.conf")
libc = ctypes.CDLL(None, use_errno=True)


class Refused(Exception):
    """What the runtime refuses; the plugin shows it as a ``pyxis:`` error of the task."""


def mount(
    source: str, target: Path, fstype: str | None = None, flags: int = 0, data: str | None = None
) -> None:
    args = [None if s is None else s.encode() for s in (source, str(target), fstype, data)]
    if libc.mount(args[0], args[1], args[2], flags, args[3]) != 0:
        raise Refused(f"mount {source} on {target}: {os.strerror(ctypes.get_errno())}")


def bind(source: str | Path, target: Path, readonly: bool = False) -> None:
    """``source`` at ``target``, without set-user-ID programs (as enroot's: no privileges to gain)."""
    mount(str(source), target, flags=MS_BIND | MS_REC)
    mount("none", target, flags=MS_BIND | MS_REMOUNT | MS_NOSUID | (MS_RDONLY if readonly else 0))


def mount_point(root: Path, path: str, directory: bool, owner: tuple[int, int]) -> Path:
    """``path`` inside ``root``, created as a directory or an empty file; the directories it
    creates belong to the user, as enroot's (rootless) would."""
    target = root / path.lstrip("/")
    missing = [p for p in [target, *target.parents] if not p.exists() and root in p.parents]
    target.parent.mkdir(parents=True, exist_ok=True)
    if directory:
        target.mkdir(exist_ok=True)
    else:
        target.touch(exist_ok=True)
    for created in missing:
        os.chown(created, *owner)
    return target


def expand(text: str, user: pwd.struct_passwd) -> str:
    """``${USER}``, ``${HOME}`` and the caller's other variables, as the EDF's values allow."""
    names = {"USER": user.pw_name, "HOME": user.pw_dir}
    return re.sub(
        r"\$\{(\w+)\}|\$(\w+)", lambda m: names.get(m[1] or m[2], os.environ.get(m[1] or m[2], "")), text
    )


def load_edf(path: str, user: pwd.struct_passwd) -> dict:
    try:
        with open(path, "rb") as f:
            edf = tomllib.load(f)
    except OSError as e:
        raise Refused(f"--environment {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise Refused(f"--environment {path}: not a valid EDF (TOML): {e}") from None
    if "image" not in edf:
        raise Refused(f"--environment {path}: the EDF names no image")
    return edf


def parse_mount(spec: str) -> tuple[str, str, bool]:
    source, _, rest = spec.partition(":")
    target, _, flags = rest.partition(":")
    return source, target or source, "ro" in flags.split("+")


def image_env(image: Path) -> dict[str, str]:
    """The image's ``ENV``, which enroot keeps in ``/etc/environment`` and applies over the caller's."""
    path = image / "etc" / "environment"
    lines = path.read_text().splitlines() if path.exists() else []
    return dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))


def build(args: argparse.Namespace) -> tuple[dict[str, str], str]:
    user = pwd.getpwuid(args.uid)
    edf = load_edf(args.edf, user) if args.edf else {}
    image = Path(expand(args.image or edf.get("image", ""), user))
    if not (image / "usr" / "local").is_dir():
        raise Refused(
            f"image {image}: not a root filesystem directory (the stand-in's images are directories)"
        )
    mounts = [expand(m, user) for m in edf.get("mounts", [])]
    mounts += [m for spec in args.mounts for m in spec.split(",") if m]
    writable = args.writable or bool(edf.get("writable", False))

    runtime = Path(args.runtime)
    mount("tmpfs", runtime, "tmpfs", MS_NOSUID | MS_NODEV, "mode=755")
    for name in ("upper", "work", "root"):
        (runtime / name).mkdir()
    root = runtime / "root"
    layers = f"lowerdir={image},upperdir={runtime / 'upper'},workdir={runtime / 'work'}"
    mount("overlay", root, "overlay", MS_NOSUID, layers)
    owner = (args.uid, args.gid)
    bind("/usr", mount_point(root, "/usr", True, owner), readonly=True)
    bind(image / "usr" / "local", root / "usr" / "local", readonly=True)
    mount("proc", mount_point(root, "/proc", True, owner), "proc", MS_NOSUID | MS_NODEV)
    bind("/dev", mount_point(root, "/dev", True, owner))
    bind("/sys", mount_point(root, "/sys", True, owner), readonly=True)
    for path in HOST_FILES:
        if Path(path).exists():
            bind(path, mount_point(root, path, False, owner), readonly=True)
    for spec in [*args.system_mounts, *mounts]:
        source, target, readonly = parse_mount(spec)
        if not Path(source).exists():
            raise Refused(f"mount {spec}: {source} does not exist")
        bind(source, mount_point(root, target, Path(source).is_dir(), owner), readonly)
    home = root / user.pw_dir.lstrip("/")
    if writable and not home.exists():
        mount_point(root, user.pw_dir, True, owner)
    if not writable:
        mount("none", root, flags=MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID)

    env = image_env(image)
    env.update({name: expand(str(value), user) for name, value in edf.get("env", {}).items()})
    if env.get("PYTORCH_VERSION"):  # enroot's hook for PyTorch images (pyxis leaves them so)
        env.update({"RANK": args.rank, "LOCAL_RANK": args.local_rank, "WORLD_SIZE": args.world_size})
    workdir = expand(args.workdir or edf.get("workdir", ""), user)
    if not workdir:
        workdir = args.cwd if (root / args.cwd.lstrip("/")).is_dir() else "/"
    elif not (root / workdir.lstrip("/")).is_dir():
        raise Refused(f"workdir {workdir}: no such directory in the container")
    return env, workdir


def main() -> int:
    parser = argparse.ArgumentParser()
    for name in (
        "--edf",
        "--image",
        "--workdir",
        "--runtime",
        "--cwd",
        "--rank",
        "--local-rank",
        "--world-size",
    ):
        parser.add_argument(name, default="")
    parser.add_argument("--mounts", action="append", default=[])
    parser.add_argument("--system-mounts", action="append", default=[])
    parser.add_argument("--writable", action="store_true")
    parser.add_argument("--uid", type=int, required=True)
    parser.add_argument("--gid", type=int, required=True)
    args = parser.parse_args()
    try:
        env, workdir = build(args)
    except (Refused, OSError) as e:
        print(f"pyxis: {e}", file=sys.stderr)
        return 1
    for name, value in env.items():
        print(f"env {name}={value}")
    print(f"workdir {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
