"""The dashboard sends no usage statistics and shows no Deploy button (``.streamlit/config.toml``)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT

READ = ("from streamlit import config; config.get_config_options(force_reparse=True); "
        "print(config.get_option('browser.gatherUsageStats'), config.get_option('client.toolbarMode'))")


def test_the_shipped_streamlit_config_turns_usage_statistics_and_deploy_off() -> None:
    out = subprocess.run([sys.executable, "-c", READ], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["False", "minimal"]
