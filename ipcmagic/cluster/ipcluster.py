"""One kernel's ipyparallel cluster: plan, start, describe and stop it."""

from __future__ import annotations

import atexit
import copy
import dataclasses
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from typing import Any

from IPython.core.error import UsageError
from IPython.core.getipython import get_ipython
from traitlets import Bool, CaselessStrEnum, Dict, Float, Integer, Unicode
from traitlets.config import Config, LoggingConfigurable

from ..base.addresses import LOOPBACK, address_for
from ..base.commands import require_command, resolve_launcher
from ..base.containers import kept_activation, require_slurm_files, session_container
from ..base.environments import warn_of_traps
from ..base.errors import ClusterError, Interrupted
from ..base.holders import USAGE_STEP, holders
from ..base.internals import fits
from ..base.slurm import Allocation
from ..base.watchdog import Watchdog
from .encryption import add_controller_env, encrypt
from .failed_start import start_failure
from .gpus import gpu_sets, use_gpus
from .halting import GRACE, ended_message, halt, interrupted_message, kill_engines, running, vanished
from .livetable import EngineUsage, LiveTable
from .losses import (
    Follower,
    describe_loss,
    guard_targets,
    lost_engines_message,
    names,
    on_this_node,
    process_alive,
    tell_controller,
)
from .plan import EXTRA_ARGS, LAUNCHERS, EnginePlan, launcher_class, plan_engines, site_options
from .px_magics import deactivate_px
from .roster import engine_info, engine_row, split_worlds
from .status import ClusterStatus
from .torchworld import form_world

#: seconds of a start's --timeout kept for stopping what a failed start started (srun's grace of
#: 1 s after SIGTERM, then up to 2 s for Slurm to confirm that the step is gone)
STOP_RESERVE = 3.0


INTERRUPTED_START = "%ipcluster start interrupted; everything started was stopped."
INTERRUPTED_RESTART = (
    "%ipcluster restart interrupted; the cluster was stopped (%ipcluster start starts a new one)."
)


def already_running(plan: EnginePlan) -> str:
    """Why a second start is refused."""
    return (
        f"A cluster with {plan.n} {plan.launcher} engines is already running; "
        "stop it first with %ipcluster stop."
    )


class IPCluster(LoggingConfigurable):
    """The ipyparallel cluster of one kernel: its own cluster id, profile directory and engines.

    Defaults are configurable in ``ipython_config.py``, e.g. ``c.IPCluster.launcher = "srun"``;
    launcher options live on the launchers (``c.SrunEngineSetLauncher.mpi = "pmix"``).
    """

    launcher = CaselessStrEnum(
        LAUNCHERS,
        "auto",
        config=True,
        help="Default launcher; auto means srun inside a Slurm allocation, else local.",
    )
    timeout = Integer(60, config=True, help="Seconds to wait for all engines to register.")
    heartbeat_ms = Integer(
        100,
        config=True,
        help="Controller heartbeat period in ms; engines count as registered on a heartbeat "
        "(ipyparallel's default of 3000 makes every start up to 3 s slower).",
    )
    heartbeat_tolerance = Float(
        10.0, config=True, help="Seconds without a heartbeat after which an engine counts as dead."
    )
    local_engines_per_cpu = Integer(
        32,
        config=True,
        help="Most local engines per CPU of the kernel (a typo such as -n 4000 would fork 4,000 "
        "Pythons on a shared node).",
    )
    controller_ip = Unicode(
        "",
        config=True,
        help="Address the controller listens on; empty: loopback when all engines run on this "
        "host, else this host's address towards the allocation's other nodes.",
    )
    name_holders = Bool(
        True,
        config=True,
        help="At each %ipcluster start and %%torchrun, and in %ipcluster status, name what else holds "
        "this job's CPUs and GPUs: other notebooks' clusters and runs, other steps of the job.",
    )
    engine_env = Dict(
        value_trait=Unicode(),
        config=True,
        help="The site's variables for every engine (e.g. NCCL's network settings); a variable the "
        "kernel already has keeps the kernel's value.",
    )
    encrypt = Bool(
        True,
        config=True,
        help="CurveZMQ on every connection of the cluster (ipyparallel's enable_curve), with keys "
        "made for each cluster: without it, anyone on the node or the network can read every %%px "
        "cell and its output, and wedge the client with a few bytes.",
    )

    fail_fast = Bool(
        True,
        config=True,
        help="A %%px cell (or a blocking execute of ipcmagic.view()) fails as soon as one engine "
        "fails while others still run: they are interrupted, and restarted if stuck (ranks waiting "
        "in MPI for the failed one). False: ipyparallel's behaviour, the cell waits for all.",
    )

    output_limit = Integer(
        5_000_000,
        config=True,
        help="Characters of each engine's stdout and stderr a %%px cell streams to the notebook; the "
        "rest is not shown, and a line says so (%%px -o NAME keeps all of it). 0: no limit.",
    )
    restart_lost_engines = Integer(
        0,
        config=True,
        help="Restart all engines at once when engines died (out of memory, a crash) or froze, after "
        "the cell that found them lost, at most this many times an hour (a crash loop stops there); "
        "0: never, %%ipcluster restart does it.",
    )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.auto_restarts: list[float] = []  # when restart_lost_engines restarted the engines
        self.told: set[int] = set()  # lost engines whose loss was said, since the last (re)start
        self.ended: str | None = None  # what a fail-fast execute did to the others, until said
        self.restarting: tuple[float, float] | None = None  # a restart's deadline and timeout
        self._settling = threading.RLock()
        self.cluster = None  # ipyparallel.Cluster while running
        self.client = None
        self.view = None  # what %px runs on (ipcmagic.cluster.pxview)
        self.dask_client = None  # distributed.Client while the engines are dask workers
        self.dask_security = None  # their certificate (distributed.security.Security)
        self.torch_backend: str | None = None  # while the engines are one torch.distributed world
        self.watchdog: Watchdog | None = None
        self.roster: dict[int, dict[str, Any]] = {}  # engines as started: id -> row of engines()
        self.live_tables: list[LiveTable] = []  # %ipcluster status --watch
        self.follower: Follower | None = None  # of the engines' launchers, since the last (re)start
        self.plan: EnginePlan | None = None
        self.started_at = 0.0
        atexit.register(self.shutdown)

    @property
    def running(self) -> bool:
        return self.cluster is not None

    @property
    def connection_file(self) -> str:
        """The running cluster's client connection file (``ipyparallel.Client(path)`` connects)."""
        return os.path.join(
            self.cluster.profile_dir, "security", f"ipcontroller-{self.cluster.cluster_id}-client.json"
        )

    def _engine_environment(self, plan: EnginePlan) -> dict[str, str]:
        """The engines' variables besides the kernel's: the site's (engine_env) that the kernel
        does not have, the kernel's venv in a container (:func:`~ipcmagic.base.containers.kept_activation`),
        then the launcher's own configured ``environment``."""
        site = {name: value for name, value in self.engine_env.items() if name not in os.environ}
        configured = plan.launcher_class(config=self.config).environment
        environment = {**site, **kept_activation(os.environ), **configured}
        warn_of_traps({**os.environ, **environment})
        return environment

    def _controller_ip(self, plan: EnginePlan, allocation: Allocation | None) -> str:
        if self.controller_ip:
            return self.controller_ip
        return LOOPBACK if plan.launcher == "local" else address_for(allocation.nodes if allocation else ())

    def start(self, plan: EnginePlan, timeout: int | None = None) -> Any:
        """Start a controller and the planned engines; return the connected Client."""
        from .launchers import LocalControllerLauncher, step_name
        from .starting import Cluster

        if self.running:
            raise UsageError(already_running(self.plan))
        allocation = Allocation.from_env()
        log = logging.getLogger("ipcmagic.ipyparallel")
        log.setLevel(logging.CRITICAL)  # failures are raised with the launcher's own output instead
        # the plan's launcher options override the user's config for this start only: a deep copy,
        # because Config.merge shares sections it copies and later merges would change the user's
        config = copy.deepcopy(self.config)
        timeout = timeout or self.timeout
        controller_ip = self._controller_ip(plan, allocation)
        # engines on this node can read the connection file, so they start together with the
        # controller and wait for it; engines elsewhere, or in a container (whose /tmp is not the
        # kernel's), get the connection info once it exists
        in_container = plan.launcher != "local" and session_container(os.environ)
        all_here = controller_ip == LOOPBACK and not in_container
        engine_args = [*plan.traits.get("engine_args", []), *self._engine_args(timeout, plan.dask)]
        traits = {**plan.traits, "engine_args": engine_args, "environment": self._engine_environment(plan)}
        if plan.launcher != "local":
            traits["profile_dir_env"] = all_here
        config.merge(Config({plan.launcher_class.__name__: traits}))
        profile_dir = tempfile.mkdtemp(prefix="ipcmagic-")
        if self.encrypt:
            encrypt(config, profile_dir)
        self.dask_security = self._dask_security(config, profile_dir) if plan.dask else None
        self.cluster = Cluster(
            config=config,
            log=log,
            n=plan.n,
            controller=LocalControllerLauncher,
            engines=plan.launcher_class,
            profile_dir=profile_dir,
            controller_ip=controller_ip,
            controller_args=self._controller_args(),
            send_engines_connection_env=not all_here,
            engine_timeout=timeout,
            delay=0,
            shutdown_atexit=False,
        )
        cluster_id = self.cluster.cluster_id
        self.watchdog = Watchdog(
            f"IPP_CLUSTER_ID={cluster_id}",
            self.cluster.profile_dir,
            allocation.job_id if allocation and plan.launcher == "srun" else None,  # its step to cancel
            step_name(cluster_id),
        )
        self.plan, self.started_at = plan, time.monotonic()
        try:
            # the stop after a failed start is part of the start: --timeout bounds both
            self.client = self.cluster.start_and_wait_sync(plan.n, timeout - min(STOP_RESERVE, timeout / 2))
        except BaseException as e:
            self.client = self.cluster.client
            output, ready = self._launcher_output(), len(self.client.ids) if self.client else 0
            self.stop()
            if isinstance(e, KeyboardInterrupt):
                raise Interrupted(INTERRUPTED_START) from None
            raise ClusterError(start_failure(plan, e, output, ready, timeout)) from None
        guard_targets(self.client, self.lost_engines, self.lost_message, self.settle)
        self._activate_px()
        self._take_roster()
        if plan.torch:
            self._form_torch_world(timeout)
        if plan.dask:
            self._start_dask(timeout)
        return self.client

    @staticmethod
    def _dask_security(config: Config, directory: str) -> Any:
        """A certificate for this cluster's dask, given to the controller's scheduler in ``config``
        with its files' place in the cluster's private ``directory``."""
        from .daskcluster import cluster_security, scheduler_env

        security = cluster_security()
        add_controller_env(config, scheduler_env(security, directory))
        return security

    def _activate_px(self) -> None:
        """``%px``, ``%%px``, ``%autopx`` and ``%pxresult`` on every engine."""
        from .pxview import px_view

        self.view = px_view(self.client, self.settle, self._end_the_rest)
        self.view.fail_fast, self.view.output_limit = self.fail_fast, self.output_limit
        self.view.heartbeat_tolerance = self.heartbeat_tolerance
        shell = get_ipython()
        if shell is not None:
            self.view.activate()

    def _end_the_rest(self, result: Any, failed: int, lost: bool) -> str | None:
        """Engine ``failed`` failed (or was ``lost``) while others ran ``result`` (:mod:`.failfast`):
        end them (:func:`.halting.halt`); the line that says so (also kept in ``ended`` for the
        cell's end), None where they all ended by themselves."""
        others = running(result)
        stuck = halt(self, result, GRACE)
        gone = vanished(result) - set(stuck)  # lost meanwhile: their step ended, say
        rows = {i: self.roster.get(i) or engine_row(i, "gone") for i in (failed, *others)}
        ended = [rows[i] for i in others if i not in gone]
        self.ended = ended_message(rows[failed], lost, ended, stuck, self.plan.n, GRACE)
        return self.ended

    def after_interrupt(self) -> str | None:
        """After a cell whose wait for ``%px`` was interrupted (ipyparallel then sends SIGINT to
        the engines): those still running it a grace time later are stuck, typically in MPI or a
        collective, and all engines are restarted; the line that says so."""
        result, self.view.last = self.view.last, None
        if result is None or not getattr(result, "interrupted", False) or result.ready():
            return None
        stuck = halt(self, result, GRACE)
        return interrupted_message(stuck, self.plan.n, GRACE) if stuck else None

    def _form_torch_world(self, timeout: float) -> None:
        """Make the engines one torch.distributed world (:mod:`.torchworld`); stop and raise if not."""
        try:
            self.torch_backend = form_world(self.client, list(self.roster.values()), timeout)
        except Exception as e:
            self.stop()
            raise ClusterError(
                f"Making the engines one torch.distributed world failed ({type(e).__name__}: {e}); "
                "everything started was stopped."
            ) from None

    def _start_dask(self, timeout: float) -> None:
        from .daskcluster import start_dask

        try:
            host, security = self.cluster.controller_ip, self.dask_security
            self.dask_client = start_dask(self.client, host, self.plan.cpus, timeout, security)
        except Exception as e:
            self.stop()
            raise ClusterError(
                f"Making the engines dask workers failed ({type(e).__name__}: {e}); everything "
                "started was stopped."
            ) from None

    def _engine_args(self, timeout: float, dask: bool) -> list[str]:
        # engines check the controller's pings every period + 500 ms; without them they exit
        misses = max(1, round(self.heartbeat_tolerance * 1000 / (self.heartbeat_ms + 500)))
        return [
            f"--IPEngine.max_heartbeat_misses={misses}",
            f"--IPEngine.wait_for_url_file={timeout}",
            # ipyparallel paces MPI engines' registrations by rank (rank 255 waits 5.1 s) to spare
            # the controller a flood; instead each engine waits for its reply as long as the start
            # may take, and the controller answers them as they come (benchmarks/registrations.py)
            "--IPEngine.mpi_registration_delay=0",
            f"--IPEngine.timeout={timeout}",
            f"--Engine.private_scratch={dask}",  # dask's files in a private directory of each node
        ]

    def _controller_args(self) -> list[str]:
        misses = max(1, round(self.heartbeat_tolerance * 1000 / self.heartbeat_ms))
        return [
            # schedulers as threads: one process, so a dead controller takes its heartbeats along
            "--IPController.use_threads=True",
            f"--HeartMonitor.period={self.heartbeat_ms}",
            f"--HeartMonitor.max_heartmonitor_misses={misses}",
        ]

    def plan_start(
        self, allocation: Allocation | None, launcher: str | None = None, **request: Any
    ) -> EnginePlan:
        """Plan a start here: what the user's request leaves out (None) comes from the launcher's
        configuration (``c.SrunEngineSetLauncher.cpu_bind = "cores"``); its command must exist
        before the allocation is asked; binding CPUs with mpirun needs Open MPI's options."""
        from .launchers import is_open_mpi

        launcher = resolve_launcher(launcher or self.launcher, allocation, LAUNCHERS, "local")
        configured = launcher_class(launcher)(parent=self)
        command = getattr(configured, "mpi_cmd", None)
        if command:
            require_command(command[0])
            if allocation:
                require_slurm_files(os.environ)
        given = {name: value for name, value in request.items() if value is not None}
        plan = plan_engines(allocation, launcher=launcher, **{**site_options(configured), **given})
        most = self.local_engines_per_cpu * len(os.sched_getaffinity(0))
        if launcher == "local" and plan.n > most:
            raise UsageError(
                f"-n {plan.n} local engines is more than {self.local_engines_per_cpu} per CPU of this kernel "
                f"({most}); use -n {most} or fewer (c.IPCluster.local_engines_per_cpu sets the bound)."
            )
        if launcher == "mpirun" and plan.traits["cpus_per_engine"] and not is_open_mpi(command):
            raise UsageError(
                f"-c binds CPUs with Open MPI's options, but {command[0]} is not Open MPI; pass your "
                "MPI's own binding options in --launcher-args instead."
            )
        # the site's extra arguments come first, the user's after them (for srun, the later win)
        extra = {
            name: [*getattr(configured, name), *plan.traits.get(name, [])]
            for name in EXTRA_ARGS
            if configured.has_trait(name)
        }
        return dataclasses.replace(plan, traits={**plan.traits, **extra})

    def _launcher_output(self) -> str:
        """What the engine launchers printed, and the controller too if it died."""
        launchers = list(self.cluster.engines.values())
        controller = self.cluster.controller
        if controller is not None and controller.state == "after":
            launchers.append(controller)
        return "\n".join(out.strip() for out in (la.get_output() for la in launchers) if out.strip())

    def watch_usage(self, interval: float) -> LiveTable:
        """A live table of the engines' usage (``%ipcluster status --watch``), until a stop or restart."""
        if not self.running:
            raise UsageError("No cluster is running; start one with %ipcluster start.")
        self.settle()
        table = LiveTable(self.roster, self._usage(interval), self._known_gone, interval)
        self.live_tables.append(table)
        return table

    def _usage(self, interval: float) -> EngineUsage:
        """A sampler of the engines' usage: here, and by a collector step on the job's other nodes."""
        allocation = Allocation.from_env()
        job_id = allocation.job_id if allocation and self.plan.launcher != "local" else None
        name = f"{USAGE_STEP}{self.cluster.cluster_id}"
        return EngineUsage(list(self.roster.values()), job_id, name, interval)

    def _known_gone(self) -> set[int]:
        follower = self.follower
        return follower.known_dead() if follower is not None else set()

    def _stop_live_tables(self, why: str) -> None:
        tables, self.live_tables = self.live_tables, []
        for table in tables:
            table.stop(why)

    def stop(self) -> None:
        """Stop engines and controller and remove the cluster's files; return when all are gone."""
        cluster, client, watchdog, dask_client = self.cluster, self.client, self.watchdog, self.dask_client
        if cluster is None:
            return
        self._stop_live_tables("The cluster was stopped.")
        self.cluster = self.client = self.view = self.watchdog = self.dask_client = self.dask_security = None
        self.torch_backend = None
        self.restarting = None
        if self.follower is not None:
            self.follower.forget()
        self.follower, self.roster = None, {}
        if dask_client is not None:
            dask_client.close()
        if client is not None:
            client.close()
            if get_ipython() is not None:
                deactivate_px(get_ipython(), client)
            release_results()
        self._end_engines(signal.SIGTERM, cluster)  # srun's end while the controller stops
        try:
            cluster.stop_cluster_sync()
        finally:
            cluster.close_loop()
            watchdog.release()  # and whatever ipyparallel's stop missed, with the cluster's files

    def _end_engines(self, sig: int, cluster: Any = None) -> None:
        """``sig`` to the engines of srun launchers at once (the others end as ipyparallel stops them)."""
        for engines in (cluster or self.cluster).engines.values():
            if hasattr(engines, "end_engines"):
                engines.end_engines(sig)

    def shutdown(self) -> None:
        """Stop quietly at interpreter exit."""
        try:
            self.stop()
        except Exception as e:  # exit must go on; say what was left
            print(f"ipcmagic: stopping the cluster at exit failed: {e}", file=sys.stderr)

    def restart(self, timeout: int | None = None, wait: bool = True, kill: bool = False) -> None:
        """Start the engines anew (controller, client and ``%px``'s view stay); return when all are
        registered, or with ``wait=False`` once they are launched: the cluster's next use waits for
        them (:meth:`settle`). ``kill``: the engines are stuck, SIGKILL them instead of SIGTERM."""
        if not self.running:
            raise UsageError("No cluster is running; start one with %ipcluster start.")
        self.settle()
        if not self.controller_alive():
            raise UsageError("The controller has died; run %ipcluster stop, then %ipcluster start.")
        try:
            self._launch_engines_anew(timeout or self.timeout, kill)
        except KeyboardInterrupt:
            self.stop()  # half the engines of a restart are no cluster to go on with
            raise Interrupted(INTERRUPTED_RESTART) from None
        if wait:
            self.settle(progress=True)

    def after_loss(self) -> tuple[str, bool]:
        """After engines were lost: what becomes of the others, said after how they were lost, and
        whether anything was done. ``restart_lost_engines`` allowing, all are restarted at once;
        else engines that are no MPI world go on without the lost ones (``%px``'s view drops them)."""
        hour_ago = time.monotonic() - 3600
        self.auto_restarts = [t for t in self.auto_restarts if t > hour_ago]
        most, done = self.restart_lost_engines, len(self.auto_restarts)
        if most and done < most:
            self.auto_restarts.append(time.monotonic())
            self.restart(wait=False)
            return restart_lost_message(self.plan.n, most, done), True
        if self.independent():  # frozen ones the controller let go must not run on when they thaw
            kill_engines(self.lost_engines())
            self.view.targets = [i for i in self.view.targets if i in self.client.ids]
            return go_on_message(self.view.targets, self.plan.launcher == "local"), True
        return restart_lost_message(self.plan.n, most, done), False

    def lost_message(self, rows: list[dict[str, Any]]) -> str:
        """What work sent to the lost engines of ``rows`` raises: how they ended, and what to do
        where the cell's end will not say what becomes of them (:meth:`after_loss`)."""
        if self.restart_lost_engines or self.independent():
            return f"{describe_loss(rows, self.step)}."
        return lost_engines_message(rows, self.step)

    def independent(self) -> bool:
        """Whether the engines are no MPI or torch world, so that one may go on without another."""
        return not self.plan.torch and all(row["size"] in (None, 1) for row in self.roster.values())

    def replace_lost(self, timeout: int | None = None) -> list[int]:
        """Start new engines for the lost ones, the others untouched (local engines, each its own
        process); the ids of the new engines."""
        if self.plan.launcher != "local":
            raise UsageError(
                f"{self.plan.launcher} runs all engines as one job step, and MPI ranks are one world that "
                "no new process can join: %ipcluster restart starts all engines anew."
            )
        if self.plan.torch:
            raise UsageError(
                "The engines are one torch.distributed world, which no new process can join: "
                "%ipcluster restart starts all engines anew and forms the world again."
            )
        lost = self.lost_engines()
        if not lost:
            raise UsageError("No engine is lost; %ipcluster restart starts all engines anew.")
        kill_engines(lost)  # a frozen one the controller let go lives on
        kept = [i for i in self.client.ids if i in self.roster]
        self.follower.forget()
        self.follower = None
        self.cluster.start_engines_sync(len(lost))
        timeout = timeout or self.timeout
        self.restarting = (time.monotonic() + timeout, timeout)
        self.settle(progress=True)
        return [i for i in self.client.ids if i not in kept]

    def _launch_engines_anew(self, timeout: float, kill: bool) -> None:
        stopped = list(self.client.ids)
        self.follower.forget()
        self.follower = None
        if kill:  # stuck in C code: SIGKILL those here at once (mpirun's stop sends SIGTERM first)
            kill_engines(list(self.roster.values()), elsewhere=False)  # the step's end: elsewhere
        self._end_engines(signal.SIGKILL if kill else signal.SIGTERM)
        self.cluster.stop_engines_sync()
        try:  # as each engine's nanny would, had it outlived its engine: the controller forgets
            # them now instead of after heartbeat_tolerance
            tell_controller(self.connection_file, stopped)
        except Exception as e:  # then the heartbeats tell it, within the timeout below
            self.log.debug("could not unregister the stopped engines: %s", e)
        deadline = time.monotonic() + timeout
        while self.client.ids:  # the controller unregisters the stopped engines
            if time.monotonic() > deadline:
                raise ClusterError("The stopped engines did not unregister; run %ipcluster stop.")
            time.sleep(0.05)
        self.cluster.start_engines_sync(self.plan.n)
        self.restarting = (deadline, timeout)

    def settle(self, progress: bool = False) -> None:
        """Finish a restart: wait for the new engines to register (showing ``progress``), then take
        them as a start does. Everything that uses the engines calls it first (``%px``'s view,
        every view's send)."""
        with self._settling:
            if self.restarting is None:
                return
            (deadline, timeout), self.restarting = self.restarting, None
            try:
                left, interactive = max(0.0, deadline - time.monotonic()), None if progress else False
                self.client.wait_for_engines(self.plan.n, timeout=left, interactive=interactive)
            except BaseException as e:
                output, ready = self._launcher_output(), len(self.client.ids)
                self.stop()
                if isinstance(e, KeyboardInterrupt):
                    raise Interrupted(INTERRUPTED_RESTART) from None
                raise ClusterError(start_failure(self.plan, e, output, ready, timeout)) from None
            self.started_at = time.monotonic()
            self.view.targets = list(self.client.ids)
            self._take_roster()
            if self.plan.torch:
                self._form_torch_world(timeout)
            if self.dask_client is not None:
                from .daskcluster import add_workers

                host = self.cluster.controller_ip
                add_workers(self.client, self.dask_client, host, self.plan.cpus, timeout, self.dask_security)

    def _take_roster(self) -> None:
        """Record the engines as started and hand out the planned GPUs; stop and raise if the
        engines are not one MPI world or a host has too few GPUs."""
        rows = self.engines()
        problem = split_worlds(rows, self.plan.n)
        try:
            gpus = gpu_sets(rows, self.plan.gpus) if self.plan.gpus else {}
        except ValueError as e:
            problem = problem or str(e)
        if problem:
            self.stop()
            raise ClusterError(problem)
        for reply in [self.client[i].apply_async(use_gpus, devices) for i, devices in gpus.items()]:
            reply.get()
        self.roster = {row["id"]: {**row, "gpus": gpus.get(row["id"], row["gpus"])} for row in rows}
        for table in self.live_tables:  # a restart's engines: the watches follow them
            table.follow(self.roster, self._usage(table.interval))
        self.told = set()
        self.follower = Follower(self.roster, self.connection_file, self.step)
        launchers = self._engine_launchers()
        self.follower.follow(launchers, self.client)
        for launcher in launchers if self.plan.launcher == "srun" else ():  # how a stop reaches them
            launcher.step_id = rows[0]["step"] or ""
            launcher.pids_here = [row["pid"] for row in rows if on_this_node(row)]

    @property
    def step(self) -> str | None:
        """srun or mpirun: the one launcher of every engine; None for local engines."""
        return None if self.plan.launcher == "local" else self.plan.launcher

    def _engine_launchers(self) -> list[Any]:
        """The processes that run the engines: srun or mpirun, or each local engine's."""
        sets = list(self.cluster.engines.values())
        return sets if self.step else [la for each in sets for la in each.launchers.values()]

    def lost_engines(self) -> list[dict[str, Any]]:
        """The engines of the last start or restart that are no longer registered, or known to be
        dead, each with how it ended (``fate``)."""
        if self.client is None or self.follower is None:
            return []
        return self.follower.rows(self.follower.known_dead() | (self.roster.keys() - set(self.client.ids)))

    def _gone(self, engine_id: int) -> dict[str, Any]:
        """A lost engine's row: as started, so its rank, host and pid say which one it was."""
        return {**self.roster.get(engine_id, engine_row(engine_id, "gone")), "state": "gone"}

    def controller_alive(self) -> bool:
        return process_alive(self.cluster.controller.process.pid)

    def holders(self) -> list[str]:
        """What else holds this job's CPUs and GPUs, a line each (none where name_holders is off)."""
        if not self.name_holders:
            return []
        allocation = Allocation.from_env()
        mine = [self.cluster.cluster_id] if self.running else []
        return [holder.line() for holder in holders(allocation.job_id if allocation else None, mine)]

    def status(self) -> ClusterStatus:
        """What ``%ipcluster status`` shows; the engines are asked before the controller's health,
        so a controller that dies meanwhile shows."""
        rows = self.engines()
        return ClusterStatus(
            self.cluster.cluster_id,
            self.plan.launcher,
            self.plan.n,
            time.monotonic() - self.started_at,
            controller_alive=self.controller_alive(),
            rows=rows,
            connection_file=self.connection_file,
            holders=self.holders(),
        )

    def engines(self, timeout: float = 3.0) -> list[dict[str, Any]]:
        """One row per engine the cluster should have: id, state (alive, busy: running something
        that did not let it answer within ``timeout``, gone) and what :func:`engine_info` reports."""
        if self.client is None:
            return []
        self.settle()
        asked = {i: self.client[i].apply_async(engine_info) for i in self.client.ids}
        deadline = time.monotonic() + timeout
        for reply in asked.values():
            reply.wait(max(0.0, deadline - time.monotonic()))
        rows, dead = {}, self.follower.known_dead() if self.follower else set()
        for i, reply in asked.items():
            if reply.ready() and reply.successful():
                rows[i] = engine_row(i, "alive", **reply.get())
            else:
                rows[i] = self._gone(i) if i in dead else engine_row(i, "busy")
        missing = [i for i in range(self.plan.n) if i not in rows][: max(0, self.plan.n - len(rows))]
        rows.update({i: self._gone(i) for i in missing})
        return [rows[i] for i in sorted(rows)]


def go_on_message(ids: list[int], replaceable: bool) -> str:
    """What becomes of engines that are no MPI world after others were lost."""
    then = "%ipcluster restart --lost replaces the lost ones" if replaceable else "%ipcluster restart"
    return f"%px runs on {names(ids)} from now on; {then} (%ipcluster restart: all anew)."


#: AsyncResult's methods that ipyparallel caches with functools.lru_cache, whose cache keeps each
#: result, hence its Client with its sockets and buffers, alive (up to 128 of them)
CACHED_METHODS = ("__len__", "_count_chunks", "split")


def release_results() -> None:
    """Let a stopped cluster's results and client go: empty AsyncResult's method caches (a kernel
    grew 0.17 MiB per start/stop cycle, every Client it made kept alive)."""
    from ipyparallel.client.asyncresult import AsyncResult

    cached = [getattr(AsyncResult, name, None) for name in CACHED_METHODS]
    if fits(
        "AsyncResult's caches", all(hasattr(method, "cache_clear") for method in cached), "not lru_caches"
    ):
        for method in cached:
            method.cache_clear()


def restart_lost_message(n: int, most: int, done: int) -> str:
    """What becomes of lost engines, ``done`` of ``most`` automatic restarts made this hour."""
    if not most:
        return "%ipcluster restart starts all engines anew."
    if done >= most:
        return (
            f"They were not restarted: {done} automatic restarts in the last hour is "
            "c.IPCluster.restart_lost_engines's limit; %ipcluster restart starts all engines anew."
        )
    return (
        f"All {n} engines are being restarted (automatic restart {done + 1} of {most} this hour, "
        "c.IPCluster.restart_lost_engines): their variables are gone."
    )


#: what :func:`engine_info` reports
