"""``interp-audit fleet``: the production shape on one machine. A PostgreSQL (Prefect's recommended database; SQLite
locks under concurrent runs), a Prefect server on it, a process work pool with workers, and the deployments they
serve: those of deployments/prefect.yaml (the registry watcher of the demo spec and its triggered audit among them),
and, for the specs named with ``--watch``, each one's triggered audit and a watcher of them all in its place.

``up`` records what it started (pids, ports, logs) in its state folder and stops it again if a later step fails,
so nothing half-started keeps running; ``down`` stops exactly those processes (each checked to be the one started,
by its start time), whole process groups, so a worker's running flows go with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from flows.logs import RUN_LOG_SETTINGS
from flows.prefect_api import LOCAL_SERVER, server_command, tail, wait_until_healthy
from interp_audit import progress
from interp_audit.errors import AuditError, SpecError

ROOT = Path(__file__).resolve().parents[1]
STATE_FILE = "fleet.json"
PREFECT_YAML = "deployments/prefect.yaml"
DB_USER, DB_NAME = "interp_audit", "prefect"
READY_TIMEOUT_SECONDS = 120
STOP_TIMEOUT_SECONDS = 30
FIRST_WINDOW_MARGIN_SECONDS = 10  # the watcher's first window ends this long before the schedule's first one
HEARTBEAT_SECONDS = 30  # each flow run's heartbeat event (Prefect's minimum interval)
SILENT_AFTER_SECONDS = 3 * HEARTBEAT_SECONDS  # a run silent this long lost its process: it is marked crashed
CRASH_DETECTION = "interp-audit: mark silent runs crashed"
WATCH_QUEUE = "registry-watch"  # the pool's queue of the registry watcher (one slot of its own)


@dataclass(frozen=True)
class FleetSettings:
    state: Path
    workers: int = 2
    pool: str = "interp-audit"
    pool_limit: int | None = None  # None: one audit per worker
    port: int = 4200
    postgres_port: int = 55432
    database_url: str | None = None  # a PostgreSQL of the user's (postgresql+asyncpg://...); None: start one here
    watch: tuple[Path, ...] = ()
    store: str | None = None
    interval: int = 60
    watch_window: int = 300  # one watcher process per this many seconds, looking every `interval` (at least one look)


@dataclass
class Started:
    name: str
    pid: int
    start_time: str  # /proc/PID/stat's field 22: tells the process started from a later one given the same pid
    log: str
    address: str = ""


@dataclass
class Fleet:
    state: Path
    api_url: str = ""
    database: str = ""  # where Prefect's database is, without the password
    pool: str = ""
    processes: list[Started] = field(default_factory=list)

    @classmethod
    def read(cls, state: Path) -> Fleet | None:
        path = state / STATE_FILE
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        return cls(state, data["api_url"], data["database"], data["pool"], [Started(**p) for p in data["processes"]])

    def write(self) -> None:
        data = asdict(self) | {"state": str(self.state)}
        (self.state / STATE_FILE).write_text(json.dumps(data, indent=2))

    def running(self) -> list[Started]:
        return [process for process in self.processes if _alive(process)]

    def launch(self, name: str, command: list[str], address: str = "", **popen) -> subprocess.Popen:
        """Start ``command`` in a process group of its own, its output in logs/NAME.log, and record it at once."""
        log_path = self.state / "logs" / f"{name}.log"
        log = open(log_path, "w+b")  # noqa: SIM115 - the child writes it; we read its tail on failure
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, **popen
        )
        process.log = log
        self.processes.append(Started(name, process.pid, _start_time(process.pid), str(log_path), address))
        self.write()
        return process


def up(settings: FleetSettings) -> Fleet:
    """Start the fleet; on any failure stop what was started and raise."""
    state = settings.state.resolve()
    existing = Fleet.read(state)
    if existing is not None and existing.running():
        pids = ", ".join(f"{p.name} {p.pid}" for p in existing.running())
        raise SpecError(f"a fleet is already up in {state} ({pids}): `interp-audit fleet down --state {state}` first")
    _check_free(settings.port, "Prefect server", "--port")
    if settings.database_url is None:
        _check_free(settings.postgres_port, "PostgreSQL", "--postgres-port")
    for spec in settings.watch:
        _check_watchable(spec)
    (state / "logs").mkdir(parents=True, exist_ok=True)
    fleet = Fleet(state, pool=settings.pool)
    fleet.write()
    try:
        database_url = settings.database_url or _start_postgres(fleet, settings.postgres_port)
        _check_database(database_url)
        fleet.database = _without_password(database_url)
        fleet.api_url = _start_server(fleet, settings.port, database_url)
        fleet.write()
        _create_pool(fleet.api_url, settings.pool, settings.pool_limit or settings.workers)
        _create_crash_detection(fleet.api_url)
        _start_workers(fleet, settings.workers)
        _deploy(fleet.api_url, settings)
    except BaseException:
        stopped = down(state)
        if stopped:
            progress.step(f"stopped what had started: {', '.join(stopped)}")
        raise
    return fleet


def down(state: Path) -> list[str]:
    """Stop every process the fleet in ``state`` started and still runs (workers first, PostgreSQL last)."""
    fleet = Fleet.read(state.resolve())
    if fleet is None:
        return []
    running = fleet.running()
    for process in reversed(running):
        _stop(process)
    (fleet.state / STATE_FILE).unlink()
    return [f"{p.name} (pid {p.pid})" for p in running]


def restart(state: Path, name: str) -> Started:
    """Stop one part of the fleet (if it still runs) and start it again as ``up`` did: PostgreSQL on its data and
    port, the Prefect server on the same database and port, a worker under its name. What runs meanwhile carries
    on: Prefect's clients retry while the server is away, and the server reconnects to PostgreSQL."""
    fleet = Fleet.read(state.resolve())
    if fleet is None:
        raise SpecError(f"no fleet in {state}: `interp-audit fleet up --state {state}` first")
    old = next((process for process in fleet.processes if process.name == name), None)
    if old is None:
        names = ", ".join(process.name for process in fleet.processes)
        raise SpecError(f"the fleet in {state} has no part {name!r}: name one of {names}")
    if _alive(old):
        _stop(old)
    fleet.processes.remove(old)
    port = int(old.address.rsplit(":", 1)[1]) if old.address else 0
    if name == "postgres":
        _start_postgres(fleet, port)
    elif name == "prefect-server":
        _start_server(fleet, port, _database_url(fleet))
    else:
        _start_worker_processes(fleet, [name])
    return next(process for process in fleet.processes if process.name == name)


def _stop(process: Started) -> None:
    # PostgreSQL's fast shutdown is SIGINT (SIGTERM would wait for every client to leave)
    stop = signal.SIGINT if process.name == "postgres" else signal.SIGTERM
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, stop)
    if not _wait_gone(process, STOP_TIMEOUT_SECONDS):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        _wait_gone(process, 5)


def _database_url(fleet: Fleet) -> str:
    """The server's database URL again: with the password of the PostgreSQL started here, or the user's own URL
    from PREFECT_API_DATABASE_CONNECTION_URL (never written to the fleet's record)."""
    password_file = fleet.state / "postgres.password"
    if any(process.name == "postgres" for process in fleet.processes) and password_file.exists():
        parts = urlsplit(fleet.database)
        password = password_file.read_text().strip()
        return f"postgresql+asyncpg://{parts.username}:{password}@{parts.hostname}:{parts.port}{parts.path}"
    url = os.environ.get("PREFECT_API_DATABASE_CONNECTION_URL")
    if not url:
        raise SpecError(
            f"the fleet's server uses a PostgreSQL of yours ({fleet.database}): set "
            "PREFECT_API_DATABASE_CONNECTION_URL to its URL, password included, to restart the server"
        )
    return url


# ------------------------------------------------------------------------------------------------ PostgreSQL


def _start_postgres(fleet: Fleet, port: int) -> str:
    """A PostgreSQL cluster in STATE/postgres (created on first use), run as the ``postgres`` user when we are root
    (PostgreSQL refuses to run as root); returns its connection URL for Prefect."""
    binaries = _postgres_binaries()
    owner = pwd.getpwnam("postgres") if os.geteuid() == 0 else pwd.getpwuid(os.geteuid())
    as_owner = {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []} if os.geteuid() == 0 else {}
    data, sockets = fleet.state / "postgres", fleet.state / "run"
    password_file = fleet.state / "postgres.password"
    if not (data / "PG_VERSION").exists():
        _check_reachable(fleet.state, owner)
        for folder in (data, sockets):
            folder.mkdir(mode=0o700, exist_ok=True)
            os.chown(folder, owner.pw_uid, owner.pw_gid)
        password_file.write_text(secrets.token_urlsafe(24))
        password_file.chmod(0o600)
        handed = sockets / "initdb.password"  # initdb, run as the owner, reads it; removed once read
        shutil.copyfile(password_file, handed)
        os.chown(handed, owner.pw_uid, owner.pw_gid)
        initdb = [str(binaries / "initdb"), "-D", str(data), "-U", DB_USER, "--pwfile", str(handed)]
        initdb += ["--auth=scram-sha-256", "-E", "UTF8", "--locale=C"]
        done = subprocess.run(initdb, capture_output=True, text=True, **as_owner)
        handed.unlink(missing_ok=True)
        if done.returncode != 0:
            raise AuditError(f"initdb failed in {data}: {' '.join(done.stderr.split())[-1500:]}")
    password = password_file.read_text().strip()
    command = [str(binaries / "postgres"), "-D", str(data), "-p", str(port), "-c", "listen_addresses=127.0.0.1"]
    command += ["-c", f"unix_socket_directories={sockets}", "-c", "max_connections=200"]
    server = fleet.launch("postgres", command, f"127.0.0.1:{port}", **as_owner)
    url = f"postgresql+asyncpg://{DB_USER}:{password}@127.0.0.1:{port}/{DB_NAME}"
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while not _answers(url.replace(f"/{DB_NAME}", "/postgres")):
        if server.poll() is not None or time.monotonic() > deadline:
            raise AuditError(f"PostgreSQL did not start on port {port}: {tail(server.log)}")
        time.sleep(0.3)
    asyncio.run(_create_database(url))
    progress.step(f"PostgreSQL on 127.0.0.1:{port} (data in {data})")
    return url


def _postgres_binaries() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parts[-3]))
    if found:
        return found[-1].parent
    on_path = shutil.which("postgres")
    if on_path:
        return Path(on_path).parent
    raise AuditError(
        "PostgreSQL is not installed: `make fleet` installs Debian's (apt-get install postgresql), or pass "
        "--database-url postgresql+asyncpg://USER:PASSWORD@HOST:PORT/DB of one you run"
    )


def _check_reachable(state: Path, owner: pwd.struct_passwd) -> None:
    """PostgreSQL runs as ``owner``: every folder above its data must let that user through."""
    for folder in [state, *state.parents]:
        info = folder.stat()
        if info.st_uid != owner.pw_uid and not info.st_mode & 0o001:
            raise SpecError(
                f"the {owner.pw_name} user, which runs PostgreSQL, cannot enter {folder} (mode "
                f"{oct(info.st_mode & 0o777)}): choose a --state folder under one it can enter, or `chmod o+x {folder}`"
            )


async def _create_database(url: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(_plain(url).replace(f"/{DB_NAME}", "/postgres"))
    try:
        if not await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DB_NAME):
            await connection.execute(f'CREATE DATABASE "{DB_NAME}"')
    finally:
        await connection.close()


def _answers(url: str) -> bool:
    import asyncpg

    try:
        asyncio.run(_connect(url, timeout=5))
    except (TimeoutError, OSError, asyncpg.CannotConnectNowError):
        return False
    return True


def _check_database(url: str) -> None:
    """The database answers and takes the password: a clear message naming it otherwise (exit 2 or 3)."""
    import asyncpg

    parts = urlsplit(url)
    where = f"PostgreSQL at {parts.hostname}:{parts.port or 5432}"
    try:
        asyncio.run(_connect(url, timeout=10))
    except asyncpg.InvalidPasswordError:
        raise SpecError(
            f"{where} refused the password for user {parts.username}: correct it in --database-url"
        ) from None
    except asyncpg.InvalidCatalogNameError:
        raise SpecError(
            f"{where} has no database {parts.path.lstrip('/')}: create it, or name one that exists"
        ) from None
    except (TimeoutError, OSError) as exc:
        raise AuditError(f"no PostgreSQL answers at {parts.hostname}:{parts.port or 5432} ({exc})") from None


async def _connect(url: str, timeout: float) -> None:
    import asyncpg

    connection = await asyncpg.connect(_plain(url), timeout=timeout)
    await connection.close()


def _plain(url: str) -> str:
    """asyncpg's form of a SQLAlchemy URL."""
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.username}@{parts.hostname}:{parts.port}{parts.path}"


# ------------------------------------------------------------------------------- Prefect: server, pool, workers


def _start_server(fleet: Fleet, port: int, database_url: str) -> str:
    url = f"http://127.0.0.1:{port}/api"
    env = (
        os.environ
        | LOCAL_SERVER
        | {
            "PREFECT_HOME": str(fleet.state / "prefect"),
            "PREFECT_API_DATABASE_CONNECTION_URL": database_url,
            "PREFECT_UI_ENABLED": "1",
            "PREFECT_UI_API_URL": url,
            "PREFECT_SERVER_LOGGING_LEVEL": os.environ.get("PREFECT_SERVER_LOGGING_LEVEL", "WARNING"),
        }
    )
    server = fleet.launch("prefect-server", server_command(port), f"http://127.0.0.1:{port}", env=env)
    wait_until_healthy(server, url, server.log)
    progress.step(f"Prefect server at http://127.0.0.1:{port} (its UI too), on PostgreSQL")
    return url


def _create_pool(api_url: str, name: str, limit: int) -> None:
    """A process work pool running at most ``limit`` audits at once (its default queue), and the registry watcher
    beside them in a queue of its own with one slot, so that a look at the registry never waits behind audits nor
    takes an audit's slot; an existing pool of that kind is reused."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        try:
            pool = client.read_work_pool(name)
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=name, type="process", concurrency_limit=limit + 1))
        else:
            if pool.type != "process":
                raise SpecError(
                    f"work pool {name!r} exists on this Prefect server as a {pool.type!r} pool, and the fleet's "
                    "workers run audits as processes: name another with --pool"
                )
            client.update_work_pool(name, WorkPoolUpdate(concurrency_limit=limit + 1))
        default = client.read_work_queue_by_name("default", work_pool_name=name)
        client.update_work_queue(default.id, concurrency_limit=limit, priority=1)
        with contextlib.suppress(ObjectAlreadyExists):
            client.create_work_queue(WATCH_QUEUE, work_pool_name=name, concurrency_limit=1, priority=2)
        watch = client.read_work_queue_by_name(WATCH_QUEUE, work_pool_name=name)
        client.update_work_queue(watch.id, concurrency_limit=1, priority=2)
    progress.step(f"work pool {name!r} (process): at most {limit} audit(s) at once, and the registry watcher")


def _create_crash_detection(api_url: str) -> None:
    """An automation that marks a flow run crashed once its heartbeats stop (its worker or machine died), as
    Prefect's docs recommend for a self-hosted server: an audit left ``Running`` would never be re-run, and a
    watcher's run left so would hold the watcher's one slot for good. The state change is not forced: a run whose
    last heartbeat reached the server after its end (a watcher's run lasts seconds) stays as it ended, and the
    server logs the refused action as a warning. The audits'
    deployments re-run their crashed runs (``flows.registry.auditor_deployment``). Replaced on each ``up``."""
    from datetime import timedelta

    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.settings import PREFECT_API_URL, temporary_settings

    ends = {f"prefect.flow-run.{state}" for state in ("Completed", "Failed", "Cancelled", "Crashed")}
    automation = Automation(
        name=CRASH_DETECTION,
        description=f"a flow run whose heartbeat ({HEARTBEAT_SECONDS} s) stops for {SILENT_AFTER_SECONDS} s crashed",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", *ends},
            match={"prefect.resource.id": "prefect.flow-run.*"},
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=SILENT_AFTER_SECONDS),
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED,
                message=f"no heartbeat for {SILENT_AFTER_SECONDS} s: the process running it is gone",
            )
        ],
    )
    with temporary_settings({PREFECT_API_URL: api_url}):
        with contextlib.suppress(ValueError):  # none yet
            Automation.read(name=CRASH_DETECTION).delete()
        automation.create()


def _start_workers(fleet: Fleet, count: int) -> None:
    names = [f"{fleet.pool}-worker-{index}" for index in range(1, count + 1)]
    _start_worker_processes(fleet, names)
    progress.step(f"{count} worker(s) online: {', '.join(names)}")


def _start_worker_processes(fleet: Fleet, names: list[str]) -> None:
    """A `prefect worker` process per name, polling the fleet's pool; returns once each is online."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    env = (
        os.environ
        | dict(RUN_LOG_SETTINGS)
        | {
            "PREFECT_API_URL": fleet.api_url,
            "PREFECT_HOME": str(fleet.state / "prefect"),
            "PREFECT_LOGGING_LEVEL": "WARNING",
            "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_SECONDS),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "False",
            "GX_ANALYTICS_ENABLED": "False",
            "INTERP_AUDIT_HOME": str(ROOT),  # deployments/prefect.yaml's pull step
        }
    )
    prefect = str(Path(sys.executable).parent / "prefect")
    workers = [
        fleet.launch(
            name,
            [prefect, "worker", "start", "--pool", fleet.pool, "--type", "process", "--name", name],
            env=env,
            cwd=ROOT,
        )
        for name in names
    ]
    started = time.time()
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    with temporary_settings({PREFECT_API_URL: fleet.api_url}), get_client(sync_client=True) as client:
        while True:
            online = {
                w.name
                for w in client.read_workers_for_work_pool(fleet.pool)
                if w.status == "ONLINE" and w.last_heartbeat_time.timestamp() >= started
            }
            if set(names) <= online:
                break
            dead = [(n, w) for n, w in zip(names, workers, strict=True) if w.poll() is not None]
            if dead or time.monotonic() > deadline:
                name, worker = dead[0] if dead else (names[0], workers[0])
                raise AuditError(f"worker {name} did not come online: {tail(worker.log)}")
            time.sleep(0.5)


def _deploy(api_url: str, settings: FleetSettings) -> None:
    """deployments/prefect.yaml's deployments; then, for the watched specs, their audits and their watcher."""
    env = os.environ | {"PREFECT_API_URL": api_url, "INTERP_AUDIT_HOME": str(ROOT)}
    prefect = str(Path(sys.executable).parent / "prefect")
    command = [prefect, "--no-prompt", "deploy", "--all", "--prefect-file", PREFECT_YAML]
    done = subprocess.run([*command, "--pool", settings.pool], env=env, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise AuditError(f"deploying {PREFECT_YAML} failed: {' '.join(done.stdout.split())[-1500:]}")
    import yaml

    names = [entry["name"] for entry in yaml.safe_load((ROOT / PREFECT_YAML).read_text())["deployments"]]
    if settings.watch:
        names += _deploy_watchers(api_url, settings)
    progress.step(f"deployed: {', '.join(names)}")


def _deploy_watchers(api_url: str, settings: FleetSettings) -> list[str]:
    """Each spec's triggered audit, and one watcher for them all: one process per window (looking every interval),
    however many specs. deployments/prefect.yaml cannot know these specs: the deployments are built here, with the
    same triggers (``audit_triggers``) as the YAML's audit and under the YAML watcher's name, which they replace.
    Entry points as module paths: the pool's workers import them from the installed package."""
    from datetime import UTC, datetime, timedelta

    from prefect import deploy
    from prefect.client.orchestration import get_client
    from prefect.deployments.runner import EntrypointType
    from prefect.schedules import Interval
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.registry import ONE_LOOK_AT_A_TIME, auditor_deployment, watch_registries
    from flows.runners import RunnerChoice
    from interp_audit.spec import load_spec

    by_module = {"entrypoint_type": EntrypointType.MODULE_PATH}
    specs = [spec.resolve() for spec in settings.watch]
    window = max(settings.interval, settings.watch_window)
    # the schedule's windows follow a first one, run at once below: an interval schedule's first run would otherwise
    # come a whole window after the deployment (its anchor is the moment of deploying, already past)
    first_scheduled = datetime.now(UTC) + timedelta(seconds=window)
    deployments = [
        auditor_deployment(load_spec(spec), spec, settings.store, RunnerChoice(), **by_module) for spec in specs
    ]
    deployments.append(
        watch_registries.to_deployment(
            name="registry-watch",
            parameters={
                "spec_paths": [str(spec) for spec in specs],
                "store": settings.store,
                "look_every_seconds": settings.interval,
                "window_seconds": window,
            },
            schedules=[Interval(timedelta(seconds=window), anchor_date=first_scheduled)],
            tags=["interp-audit"],
            description=f"lists the registry's versions of {len(specs)} spec(s)' models and announces new ones",
            concurrency_limit=ONE_LOOK_AT_A_TIME,
            work_queue_name=WATCH_QUEUE,
            **by_module,
        )
    )
    with temporary_settings({PREFECT_API_URL: api_url}):
        deploy(
            *deployments,
            work_pool_name=settings.pool,
            build=False,
            push=False,
            print_next_steps_message=False,
            ignore_warnings=True,
        )
        with get_client(sync_client=True) as client:
            watcher = client.read_deployment_by_name(f"{watch_registries.name}/registry-watch")
            until_scheduled = (first_scheduled - datetime.now(UTC)).total_seconds() - FIRST_WINDOW_MARGIN_SECONDS
            client.create_flow_run_from_deployment(watcher.id, parameters={"window_seconds": max(until_scheduled, 0)})
    return [f"{d.flow_name}/{d.name}" for d in deployments]


def _check_watchable(spec: Path) -> None:
    from interp_audit.spec import load_spec

    if load_spec(spec).spec.model.source != "mlflow":
        raise SpecError(f"{spec}: --watch needs a registry model (model.source: mlflow)")


# ------------------------------------------------------------------------------------------------ processes


def _check_free(port: int, part: str, option: str) -> None:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            raise SpecError(
                f"port {port} for the {part} is in use on 127.0.0.1: stop what holds it, or pass {option} with a "
                "free port"
            ) from None


def _start_time(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _wait_gone(process: Started, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(process.pid, os.WNOHANG)  # reap it where it is our own child
        if not _alive(process):
            return True
        time.sleep(0.2)
    return False


def _alive(process: Started) -> bool:
    """The process we started is still there (not a later one with its pid, not a zombie)."""
    try:
        fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[19] == process.start_time and fields[0] != "Z"
