"""Run an ipcmagic cluster of local engines until stdin closes, as a kernel runs one.

    python cluster.py SECURITY_DIR ENGINES
Its connection files are copied to SECURITY_DIR as ``ipcontroller-client.json`` and
``ipcontroller-engine.json`` (what ``Client(profile=...)`` and ``ipengine --profile=...`` read);
prints ``ready`` once every engine has registered. Engines get the options ipyparallel's test
harness gives its own (no colours in tracebacks).
"""

import shutil
import sys
from pathlib import Path

from traitlets.config import Config

from ipcmagic.cluster.ipcluster import IPCluster
from ipcmagic.cluster.plan import launcher_class

#: as ipyparallel's test harness starts its engines
ENGINE_ARGS = ["--InteractiveShell.colors=nocolor"]


def main(security: Path, engines: int) -> None:
    cluster = IPCluster(config=Config({launcher_class("local").__name__: {"engine_args": ENGINE_ARGS}}))
    cluster.start(cluster.plan_start(None, launcher="local", n=engines))
    try:
        for kind in ("client", "engine"):
            name = f"ipcontroller-{cluster.cluster.cluster_id}-{kind}.json"
            given = Path(cluster.cluster.profile_dir, "security", name)
            shutil.copy(given, security / f"ipcontroller-{kind}.json")
        print("ready", flush=True)
        sys.stdin.read()
    finally:
        cluster.stop()


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
