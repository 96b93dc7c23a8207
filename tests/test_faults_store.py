"""Faults of the report store (issue 17): its disk fills up in the middle of a publish, and two reviewers sign the
same run off at the same moment. Real audits and reviews, each a command line in a process of its own."""

import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from conftest import new_bucket
from test_store import run_tables
from typer.testing import CliRunner

from flows.cli import app
from interp_audit import report
from interp_audit.store import ReportStore
from interp_audit.store_manifest import MANIFESTS, STAGING

pytestmark = [pytest.mark.slow, pytest.mark.faults, pytest.mark.usefixtures("prefect_server")]

ROOT = Path(__file__).resolve().parents[1]
FILL_ON_PUBLISH = Path(__file__).parent / "assets" / "fill_on_publish.py"
PARTITION = "model=gray-net/version=7"


def small_audit(gray_spec) -> Path:
    """The smallest audit that runs a method: dissection of one layer over 12 concepts, no baseline."""
    return gray_spec(
        data="builtin:shapes?split=val&n=6",
        ops={"dissection": {"layers": ["body.conv1"], "concepts": "builtin:concepts?n=12&size=28", "baseline": "none"}},
    )


def command_env(**extra) -> dict:
    """The environment of a command line run here: the session's Prefect server, this checkout first."""
    from prefect.settings import PREFECT_API_URL

    return {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONPATH": str(ROOT), **extra}


def interp_audit(*args, entry=("-m", "flows.cli"), **env) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, *entry, *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=command_env(**env),
    )
    return done.returncode, done.stdout + done.stderr


def in_store(store: Path, name: str) -> list[str]:
    """Every path under the store that names ``name`` (a run id), relative to the store."""
    return sorted(str(path.relative_to(store)) for path in store.rglob("*") if name in str(path.relative_to(store)))


def publish_runs_of(run_id: str) -> list:
    """The publish-report task runs of the audit's flow run (its run id), once final."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline = time.monotonic() + 30
    while True:
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[uuid.UUID(run_id)])))
        publishes = [run for run in runs if run.name.startswith("publish-report")]
        if (publishes and all(run.state is not None and run.state.is_final() for run in publishes)) or (
            time.monotonic() > deadline
        ):
            return publishes
        time.sleep(0.5)


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs of its own (we run as root), unmounted after."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("a small disk for the store needs the mount command, which is not installed")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"a small disk for the store needs `mount -t tmpfs`, not permitted here: {mounted.stderr!r}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def plant_leftovers(store: Path, run_id: str, age_seconds: float) -> list[str]:
    """What a run killed mid-publish leaves: its staging (audit_runs still there) and one table moved into place,
    all last touched ``age_seconds`` ago."""
    staged = store / STAGING / run_id / "audit_runs" / PARTITION / f"{run_id}.parquet"
    orphan = store / "onnx_parity" / PARTITION / f"{run_id}.parquet"
    for path in (staged, orphan):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"PAR1 half-written table")
    then = time.time() - age_seconds
    for path in [*(store / STAGING / run_id).rglob("*"), store / STAGING / run_id, orphan]:
        os.utime(path, (then, then))
    return [str(orphan.relative_to(store)), f"{STAGING}/{run_id}"]  # in the order gc removes them


@pytest.mark.parametrize("moment", ["stage", "manifest"])
def test_a_disk_that_fills_up_mid_publish_leaves_nothing_and_the_next_run_clears_dead_leftovers(
    gray_spec, small_disk, moment
):
    """The store is a small tmpfs of its own. tests/assets/fill_on_publish.py runs the audit's command line and
    only picks the moment: as the run's tables are about to be staged, or (``manifest``) once they are all moved
    into their table folders and the manifest is about to be written, it writes a filler file until the disk
    refuses. The full disk is real: every write of the publish after that meets ENOSPC from the kernel."""
    spec, store, filler = small_audit(gray_spec), small_disk / "reports", small_disk / "filler"

    code, output = interp_audit(
        FILL_ON_PUBLISH, "run", spec, "--store", store, entry=(), FILL_ON_PUBLISH=str(filler), FILL_ON_PUBLISH_AT=moment
    )
    assert code == 3, output
    assert filler.stat().st_size > 3 << 20  # the disk did fill up, at the moment picked
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output
    found = re.fullmatch(
        rf"error: report store {re.escape(str(store))} is full \(No space left on device\) while publishing run "
        r"(?P<run>[0-9a-f-]{36}): nothing of the run was published; free space there, or point report.store "
        r"\(or --store\) at a store with room, and run the audit again",
        errors[0],
    )
    assert found, output
    assert "Traceback" not in output, output
    failed_run = found["run"]
    publishes = publish_runs_of(failed_run)
    assert [(run.state.name, run.run_count) for run in publishes] == [("Failed", 1)]  # no retry of a full disk

    assert report.list_runs(store).empty
    checked = ReportStore.open(store).check()
    assert checked.intact and checked.published == 0, checked
    assert checked.staging == [] and checked.orphans == [], checked
    assert in_store(store, failed_run) == []  # no staging, no table file, no manifest of the run

    # the next run, on a disk with room again, publishes and removes a dead run's leftovers, never a live run's
    filler.unlink()
    dead, live = str(uuid.uuid4()), str(uuid.uuid4())
    dead_leftovers = plant_leftovers(store, dead, age_seconds=2 * 3600)
    live_staging = store / STAGING / live / "predictions" / PARTITION / f"{live}.parquet"
    live_staging.parent.mkdir(parents=True)
    live_staging.write_bytes(b"PAR1 being written")
    assert sorted(ReportStore.open(store).check().orphans) == [dead_leftovers[0]]

    code, output = interp_audit("run", spec, "--store", store)
    assert code == 0, output
    runs = report.list_runs(store)
    assert len(runs) == 1 and runs.run_id.item() != failed_run
    assert f"removed 2 leftover(s) of crashed runs, untouched for 60 minutes: {', '.join(dead_leftovers)}" in (
        " ".join(output.split())
    ), output
    assert in_store(store, dead) == []
    assert live_staging.read_bytes() == b"PAR1 being written"
    checked = ReportStore.open(store).check()
    assert checked.intact and checked.staging == [f"{STAGING}/{live}"] and checked.orphans == [], checked
    assert in_store(store, failed_run) == []


# ------------------------------------------------------------------------------ two sign-offs at the same moment


# The review command line, its append held until both reviewers' processes have reached theirs (a barrier of two
# files): the imports of two processes started together end tens of milliseconds apart, their appends would not.
AT_THE_SAME_MOMENT = """
import os, sys, time
from pathlib import Path
from interp_audit.store import ReportStore

barrier, append = Path(os.environ["REVIEW_BARRIER"]), ReportStore.append
def append_together(self, *args):
    (barrier / str(os.getpid())).touch()
    deadline = time.monotonic() + 60
    while len(list(barrier.iterdir())) < 2 and time.monotonic() < deadline:
        time.sleep(0.001)
    return append(self, *args)
ReportStore.append = append_together
from flows.cli import app
app(prog_name="interp-audit")
"""


def sign_off_together(store: str, run_id: str, barrier: Path) -> list[str]:
    """Two reviewers, each in a process of their own, started before either is waited on, whose appends start
    within a millisecond of each other."""
    barrier.mkdir()
    decisions = [("ada", "--approve"), ("grace", "--reject")]
    reviews = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                AT_THE_SAME_MOMENT,
                "review",
                run_id,
                "--reviewer",
                name,
                decision,
                "--store",
                store,
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=command_env(REVIEW_BARRIER=str(barrier)),
        )
        for name, decision in decisions
    ]
    outputs = [review.communicate(timeout=120)[0] for review in reviews]
    assert [review.returncode for review in reviews] == [0, 0], outputs
    assert len(list(barrier.iterdir())) == 2  # both met at the barrier
    return outputs


def assert_both_recorded(store: str, run_id: str) -> None:
    opened = ReportStore.open(store)
    reviews = report.load_table(store, "reviews", run_id=run_id).sort_values("reviewer")
    assert reviews[["reviewer", "decision"]].values.tolist() == [["ada", "approved"], ["grace", "rejected"]]
    assert reviews.review_id.nunique() == 2
    assert set(reviews.tables_sha256) == {opened.tables_sha256(run_id)}
    appended = [manifest for manifest in opened.manifests() if manifest.kind == "append"]
    of_reviews = [manifest for manifest in appended if {file.table for file in manifest.files} == {"reviews"}]
    assert sorted(manifest.commit_id for manifest in of_reviews) == sorted(reviews.review_id)
    (card,) = report.load_table(store, "model_cards", run_id=run_id).itertuples()  # the approval's, and only it
    assert card.review_id == reviews[reviews.decision == "approved"].review_id.item()
    assert len(appended) == 3
    result = CliRunner().invoke(app, ["report", "show", run_id, "--store", store])
    assert result.exit_code == 0, result.output
    shown = " ".join(result.output.split())
    assert "review: approved by ada" in shown and "review: rejected by grace" in shown, shown
    checked = opened.check()
    assert checked.intact and checked.staging == [] and checked.orphans == [], checked


def test_two_reviewers_signing_off_one_run_at_the_same_moment_are_both_recorded(gray_spec, tmp_path):
    store = tmp_path / "reports"
    code, output = interp_audit("run", small_audit(gray_spec))
    assert code == 0, output
    run_id = report.list_runs(store).run_id.item()

    sign_off_together(str(store), run_id, tmp_path / "barrier")
    assert_both_recorded(str(store), run_id)
    assert len(list((store / "reviews" / PARTITION).iterdir())) == 2
    assert len(list((store / MANIFESTS).iterdir())) == 4  # the run's, one per review, the approval's model card


def test_two_reviewers_signing_off_one_run_on_s3_at_the_same_moment_are_both_recorded(s3_endpoint, tmp_path):
    _, _, uri = new_bucket(s3_endpoint)
    run_id = str(uuid.uuid4())
    store = ReportStore.open(uri)
    store.stage(run_id, "m", "1", run_tables(run_id))
    store.publish(run_id, "m", "1")

    sign_off_together(uri, run_id, tmp_path / "barrier")
    assert_both_recorded(uri, run_id)
