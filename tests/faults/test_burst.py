"""Load (issue 12): the burst of bench/burst.py at 1,000 deliveries: every valid one persisted once, no 5xx.

Timing is printed, never asserted (a shared CI host is noisy); the counts are the promise.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import burst  # noqa: E402

pytestmark = pytest.mark.integration
CI_DELIVERIES = 1000


def test_burst_of_signed_deliveries_persists_each_valid_one_once_on_the_right_queue() -> None:
    result = burst.run_burst(CI_DELIVERIES, concurrency=32)
    print(burst.report(result))
    counts = result["counts"]
    assert counts["requests"] == CI_DELIVERIES and counts["resends"] == 100 and counts["bad_signatures"] == 50
    assert counts["tasks_expected"] > 300 and counts["specialties"] == len(burst.SPECIALTIES), counts
    assert counts["lost"] == 0 and counts["duplicated"] == 0, counts
    assert counts["tasks_found"] == counts["tasks_expected"], counts
    assert counts["wrong_queue"] == 0 and counts["not_sent_once"] == 0, counts
    assert counts["server_errors"] == 0 and counts["valid_refused"] == 0, result["statuses"]
    assert counts["bad_accepted"] == 0 and counts["bad_persisted"] == 0, counts
    assert result["statuses"]["401"] == 50
