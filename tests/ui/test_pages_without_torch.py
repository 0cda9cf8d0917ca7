"""Every dashboard page renders without importing torch (only on-demand Grad-CAM may load it).

The test process itself has torch loaded, so the pages run under AppTest in one fresh interpreter,
against a populated store; after each page it reports whether ``torch`` is in ``sys.modules``, and
who imported it first.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from dashboard_store import populate_full_store

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "dashboard"
SCANS = "pages/4_Scan_Explorer.py"

# Runs in the fresh interpreter: argv[1] is a JSON list of [page or null for Home, query params, session state].
PROBE = r"""
import importlib.abc, json, sys, traceback

first_import = []


class TorchSpy(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and not first_import:
            first_import.append("".join(traceback.format_stack(limit=30)[:-1]))
        return None


sys.meta_path.insert(0, TorchSpy())
from streamlit.testing.v1 import AppTest

for page, query, state in json.loads(sys.argv[1]):
    at = AppTest.from_file(sys.argv[2], default_timeout=120)
    for key, value in state.items():
        at.session_state[key] = value
    at.run()
    if page:
        at.switch_page(page)
        at.query_params.update(query)
        at.run()
    print(json.dumps({"page": page or "Home", "query": query, "state": state,
                      "exceptions": [e.value for e in at.exception], "warnings": [w.value for w in at.warning],
                      "titles": [t.value for t in at.title], "torch": "torch" in sys.modules,
                      "images": [img.caption for element in at.get("image") for img in element.proto.imgs]
                                + [c.value for c in at.caption],  # the Scan Explorer's viewer: a caption under it
                      "first_import": first_import[0] if first_import else ""}), flush=True)
"""


def test_every_page_renders_without_importing_torch(tmp_path: Path) -> None:
    url, ids = populate_full_store(tmp_path)
    pages = sorted(p.relative_to(DASHBOARD).as_posix() for p in (DASHBOARD / "pages").glob("*.py"))
    assert len(pages) >= 6 and SCANS in pages
    # The Scan Explorer computes a map (torch) for a scan without a stored one unless that is switched
    # off: it opens on the model with stored heat maps, and on the other one with on-demand Grad-CAM off.
    stored, no_maps = {"run": str(ids["scan_ssl"])}, {"run": str(ids["scan_scratch"])}
    visits = [[None, {}, {}]] + [[page, {}, {}] for page in pages if page != SCANS] + \
        [[page, stored, {}] for page in pages] + [[SCANS, no_maps, {"on_demand": False}]]
    env = {**os.environ, "SSLMRI_DB": url}
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(visits), str(DASHBOARD / "Home.py")], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    reports = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert done.returncode == 0 and len(reports) == len(visits), done.stderr[-3000:]
    for report in reports:
        where = f"{report['page']} {report['query']} {report['state']}"
        assert not report["exceptions"], f"{where}: {report['exceptions']}"
        assert report["titles"], f"{where}: the page shows no title (did it stop early?)"
        assert not [w for w in report["warnings"] if "Cannot show this scan" in w], f"{where}: {report['warnings']}"
        if report["torch"]:
            pytest.fail(f"{where} imported torch; first import:\n{report['first_import']}")
    captions = {r["query"].get("run"): " ".join(r["images"]) for r in reports if r["page"] == SCANS}
    assert "stored gradcam heat map" in captions[stored["run"]], captions  # the overlay drawn over the scan
    assert "no stored gradcam heat map" in captions[no_maps["run"]], captions
    assert "cli.py gradcam" in captions[no_maps["run"]], captions  # on-demand off: the page says how to store maps
