"""Every test and every notebook run under pytest uses smoke mode and a throw-away work dir."""

import os
import tempfile


def pytest_configure(config):
    os.environ["DDPM_SMOKE"] = "1"
    os.environ.setdefault("DDPM_WORKDIR", tempfile.mkdtemp(prefix="ddpm-tests-"))
    os.environ.setdefault("MPLBACKEND", "Agg")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
