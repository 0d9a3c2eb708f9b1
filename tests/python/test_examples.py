"""The teaching example (docs/examples/course.py) runs against a gateway of the demo data and
checks its own numbers against xarray; run twice, its URLs are answered from the cache."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from gateway import REPO, start_gateway

FIXTURES = REPO / "fixtures" / "data" / "good"


def test_the_course_example_runs_and_its_urls_are_computed_once(tmp_path):
    gw = start_gateway(FIXTURES, "demo", tmp_path / "catalog")
    try:
        env = {**os.environ, "ZARRGATE_ENDPOINT": gw.endpoint, "COURSE_PLOT": str(tmp_path / "plot.png")}
        runs = [subprocess.run([sys.executable, str(REPO / "docs" / "examples" / "course.py")], env=env,
                               capture_output=True, text=True, timeout=600) for _ in range(2)]
        for run in runs:
            assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
            assert "every number matches xarray" in run.stdout
        assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        caches = [re.findall(r"server cache: (\w+)", run.stdout) for run in runs]
        assert caches == [["miss", "miss"], ["hit", "hit"]], caches
    finally:
        gw.stop()
