"""A Flask site as many are: SQLAlchemy over a SQLite database, pandas and SciPy for the numbers, Jinja for the
page, served by gunicorn; python3 from Debian, the rest wheels from PyPI pinned below.

At start each gunicorn worker imports the app, which reads its table through SQLAlchemy into pandas and fits a
trend with SciPy before it serves anything, so the first 200 means the whole stack was loaded.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from testbed import TestbedError

from .app import App
from .rootfs import apps_cache, run_in

TITLE = "nri-optimizer Flask"
PYTHON = "3.11"  # bookworm's python3, the ABI the wheels are chosen for
PACKAGES = ("python3", "python3-pip", "ca-certificates")
# Every distribution installed, pinned, so that the image is the same wherever it is built.
REQUIREMENTS = (
    "blinker==1.9.0",
    "click==8.5.1",
    "flask==3.1.3",
    "gunicorn==27.0.1",
    "itsdangerous==2.2.0",
    "jinja2==3.1.6",
    "markupsafe==3.0.4",
    "numpy==2.4.6",
    "pandas==3.1.1",
    "python-dateutil==4.0.0",
    "scipy==1.17.1",
    "sqlalchemy==2.1.9",
    "typing-extensions==4.16.0",
    "tzdata==2026.6",
    "werkzeug==3.1.9",
)
# Wheels for Debian 12's glibc 2.36 on x86-64, whatever the build machine runs.
_PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64")

_APP = f'''"""{TITLE}: readings from the database, summarised at start, shown as a table."""

import numpy as np
import pandas as pd
from flask import Flask, render_template
from scipy import stats
from sqlalchemy import create_engine, text

engine = create_engine("sqlite:////app/data/app.db")
with engine.connect() as connection:
    readings = pd.read_sql(text("SELECT city, day, temperature FROM readings ORDER BY day"), connection)
summary = readings.groupby("city")["temperature"].describe()
trend = stats.linregress(readings["day"].to_numpy(dtype=np.float64), readings["temperature"].to_numpy())

app = Flask(__name__)


@app.route("/")
def index():
    return render_template("index.html", title="{TITLE}", table=summary.to_html(), slope=trend.slope)
'''
_TEMPLATE = """<!doctype html>
<title>{{ title }}</title>
<h1>{{ title }}</h1>
{{ table|safe }}
<p>Trend: {{ '%.4f'|format(slope) }} degrees a day.</p>
"""
_INITDB = """import random, sqlite3
db = sqlite3.connect("/app/data/app.db")
db.execute("CREATE TABLE readings (city TEXT, day INTEGER, temperature REAL)")
rng = random.Random(19)
cities = ["Lisbon", "Oslo", "Nairobi", "Lima", "Osaka", "Perth"]
db.executemany("INSERT INTO readings VALUES (?, ?, ?)",
               [(c, d, round(rng.gauss(15, 8), 1)) for d in range(2000) for c in cities])
db.commit()
"""
_ENTRYPOINT = """#!/bin/sh
exec python3 -m gunicorn --bind "127.0.0.1:${PORT:-8080}" --workers 2 --chdir /app app:app
"""
# pip as a Dockerfile's RUN would call it, from the wheels bound in read-only, with no network (run_in). No
# .pyc now: they are compiled below once every source has the mtime the image's tar gives it (0), so that the
# timestamps recorded in them match in the container and Python uses them instead of compiling again.
_BUILD_SCRIPT = f"""
python3 -m pip install --quiet --no-index --find-links /tmp/wheels --no-compile --break-system-packages \\
    --root-user-action=ignore {" ".join(REQUIREMENTS)}
python3 /tmp/initdb.py
rm /tmp/initdb.py
"""
_COMPILE_SCRIPT = f"""
python3 -m compileall -q -j 0 /usr/lib/python3/dist-packages /usr/local/lib/python{PYTHON}/dist-packages /app \\
    > /dev/null
python3 -m compileall -q -j 0 -x '/(test|tests|lib2to3)/' /usr/lib/python{PYTHON} > /dev/null
"""


def wheels(cache: Path | None = None) -> Path:
    """The folder holding every wheel of REQUIREMENTS, downloading the missing ones."""
    folder = (cache or apps_cache()) / "wheels"
    present = {path.name.lower() for path in folder.glob("*.whl")}
    missing = [req for req in REQUIREMENTS if not any(name.startswith(_wheel_prefix(req)) for name in present)]
    if missing:
        folder.mkdir(parents=True, exist_ok=True)
        platforms = [arg for platform in _PLATFORMS for arg in ("--platform", platform)]
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            *platforms,
            "--python-version",
            PYTHON,
            "--implementation",
            "cp",
            "-d",
            str(folder),
            *missing,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise TestbedError(
                f"pip download {' '.join(missing)} failed: {proc.stderr.strip()[-500:]}; check that PyPI is reachable"
            )
    return folder


def setup(root: Path) -> None:
    app = root / "app"
    (app / "templates").mkdir(parents=True)
    (app / "data").mkdir()
    (app / "app.py").write_text(_APP)
    (app / "templates/index.html").write_text(_TEMPLATE)
    (root / "tmp/initdb.py").write_text(_INITDB)
    run_in(root, _BUILD_SCRIPT, binds={wheels(): "/tmp/wheels"}, what="installing the Python app")
    for directory, _, names in os.walk(root):
        for name in names:
            if name.endswith(".py"):
                os.utime(Path(directory, name), (0, 0), follow_symlinks=False)
    run_in(root, _COMPILE_SCRIPT, what="compiling the Python app's modules")
    entrypoint = root / "usr/local/bin/start-python-web"
    entrypoint.write_text(_ENTRYPOINT)
    entrypoint.chmod(0o755)


def _wheel_prefix(requirement: str) -> str:
    # A wheel's file name starts with the normalised name (PEP 427: runs of -_. as _) and the version.
    name, version = requirement.split("==")
    return f"{name.replace('-', '_').lower()}-{version}-"


APP = App(
    name="python-web",
    packages=PACKAGES,
    setup=setup,
    entrypoint=("/usr/local/bin/start-python-web",),
    ready_path="/",
    ready_text=f"<h1>{TITLE}</h1>",
    inputs=lambda: "\n".join(REQUIREMENTS).encode(),
)
