import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def shared() -> Path:
    """The read-only shared data beside the repo; required in CI, skipped locally when absent."""
    if not SHARED.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"shared data missing at {SHARED} (required when CI=true)")
        pytest.skip(f"shared data missing at {SHARED}")
    return SHARED
