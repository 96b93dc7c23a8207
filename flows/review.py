"""Sign-off inside Prefect: a passed audit pauses until a reviewer decides, from the CLI or the Prefect UI.

`interp-audit review RUN` resumes a run that waits, with the decision as its input; the Prefect UI shows the
same form (`SignOff`). Either way the flow itself appends the review, so there is exactly one row per decision
(and, for an approval, one model card in ``model_cards``).
"""

from __future__ import annotations

from uuid import UUID

from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run, resume_flow_run
from prefect.input import RunInput
from pydantic import Field

from interp_audit import progress
from interp_audit.report import review_run


class SignOff(RunInput):
    """The reviewer's decision on a paused audit."""

    reviewer: str = Field(min_length=1, description="who signs")
    approve: bool = Field(description="true approves the run, false rejects it")
    comment: str | None = Field(None, description="why")


def wait_for_sign_off(store: str, run_id: str, timeout_seconds: int, poll_seconds: int = 2) -> dict:
    """Pause the flow run until a reviewer decides; append the review and return its row."""
    progress.step(
        f"waiting up to {timeout_seconds} s for a reviewer: interp-audit review {run_id} --approve|"
        "--reject --reviewer NAME, or Resume in the Prefect UI"
    )
    try:
        decision = pause_flow_run(wait_for_input=SignOff, timeout=timeout_seconds, poll_interval=poll_seconds)
    except FlowPauseTimeout:
        raise RuntimeError(
            f"no sign-off within {timeout_seconds} s; the report stays published and the registry "
            f"alias unset; sign it off later with `interp-audit review {run_id}`"
        ) from None
    row = review_run(store, run_id, approve=decision.approve, reviewer=decision.reviewer, comment=decision.comment)
    progress.step(f"{row['decision']} by {row['reviewer']}")
    return row


def resume_if_waiting(run_id: str, *, approve: bool, reviewer: str, comment: str | None) -> bool:
    """Hand the decision to the audit's flow run if it is paused waiting for one; False when it is not."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():  # no shared Prefect server: no flow run can be waiting on it
        return False
    try:
        flow_run_id = UUID(run_id)
    except ValueError:
        return False
    with get_client(sync_client=True) as client:
        try:
            state = client.read_flow_run(flow_run_id).state
        except ObjectNotFound:
            return False
    if state is None or not state.is_paused():
        return False
    resume_flow_run(flow_run_id, run_input={"reviewer": reviewer, "approve": approve, "comment": comment})
    return True
