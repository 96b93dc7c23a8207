"""The trained demo models the tests audit, shipped beside the tests so that a test run trains nothing.

They are the demo's own cache files (weights plus the sidecar holding their cache key), so `interp_ops.demo_models`
takes them as a cache hit while its data, model and training code are unchanged, and trains again otherwise.
`test_demo_models.py` fails when they are stale; `make test-assets` trains them again (about a minute).
"""

import shutil
import sys
from pathlib import Path

SHIPPED = Path(__file__).parent / "shipped-models"
RESEEDED = 1  # the seed of the second honest model (a retrained version, in the review tests)


def copy_shipped(out_dir: Path, seed: int = 0) -> Path:
    """out_dir holding the shipped models trained with ``seed`` (0: honest and shortcut; RESEEDED: honest)."""
    shutil.copytree(SHIPPED / f"seed{seed}", out_dir, dirs_exist_ok=True)
    return out_dir


def refresh() -> None:
    """Train the shipped models again from the current code (run by ``make test-assets``)."""
    from interp_ops.demo_models import ensure_demo_models, train_demo_model

    for seed in (0, RESEEDED):
        shutil.rmtree(SHIPPED / f"seed{seed}", ignore_errors=True)
    trained = {
        **ensure_demo_models(SHIPPED / "seed0"),
        "honest, reseeded": train_demo_model("honest", SHIPPED / f"seed{RESEEDED}", seed=RESEEDED),
    }
    for name, model in trained.items():
        print(f"{name}: val accuracy {model.val_accuracy:.3f}, {model.train_seconds:.0f} s -> {model.weights_path}")


if __name__ == "__main__":
    sys.exit(refresh())
