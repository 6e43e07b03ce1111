"""An Express site with the dependencies a Node.js service drags in: EJS views, lodash, moment and date-fns,
RxJS, TypeScript (transpiling the page's script at start, as ts-node setups do), and sql.js (SQLite compiled to
WebAssembly) over the app's database; nodejs from Debian, the modules from npm.

At start the server loads every one of them, opens the database and queries it before it listens, so the first
200 means the whole stack was loaded. The modules are pure JavaScript (no install scripts, no native addons), so
npm on the build machine installs them for Debian 12's node 18.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from testbed import TestbedError

from .app import App
from .rootfs import apps_cache, run_in

TITLE = "nri-optimizer Express"
PACKAGES = ("nodejs", "ca-certificates")
# Direct dependencies, pinned; versions that still run on node 18 (the newest @aws-sdk, for one, needs 20).
DEPENDENCIES = {
    "date-fns": "4.4.0",
    "ejs": "3.1.10",
    "express": "4.22.3",
    "lodash": "4.18.1",
    "moment": "2.31.0",
    "rxjs": "7.8.2",
    "sql.js": "1.17.0",
    "typescript": "5.9.3",
}
_PACKAGE_JSON = (
    json.dumps(
        {
            "name": "nri-optimizer-node-web",
            "version": "1.0.0",
            "private": True,
            "main": "server.js",
            "dependencies": DEPENDENCIES,
        },
        indent=2,
        sort_keys=True,
    )
    + "\n"
)

_SERVER = """'use strict';
const fs = require('fs');
const path = require('path');
const express = require('express');
const ejs = require('ejs');
const _ = require('lodash');
const moment = require('moment');
const { formatDistanceStrict } = require('date-fns');
const { from, lastValueFrom } = require('rxjs');
const { groupBy, mergeMap, reduce, toArray } = require('rxjs/operators');
const ts = require('typescript');
const initSqlJs = require('sql.js');

async function main() {
  const SQL = await initSqlJs();
  const db = new SQL.Database(fs.readFileSync(path.join(__dirname, 'data', 'app.sqlite')));
  const [result] = db.exec('SELECT city, day, temperature FROM readings ORDER BY day');
  const rows = result.values.map(([city, day, temperature]) => ({ city, day, temperature }));
  const cities = await lastValueFrom(from(rows).pipe(
    groupBy((row) => row.city),
    mergeMap((group) => group.pipe(reduce((acc, row) => ({
      city: row.city, count: acc.count + 1, sum: acc.sum + row.temperature }), { count: 0, sum: 0 }))),
    toArray()));
  const script = ts.transpileModule(fs.readFileSync(path.join(__dirname, 'views', 'page.ts'), 'utf8'),
    { compilerOptions: { target: ts.ScriptTarget.ES2017 } }).outputText;
  const span = formatDistanceStrict(new Date(2020, 0, 1), new Date(2020, 0, 1 + _.maxBy(rows, 'day').day));
  const app = express();
  app.set('views', path.join(__dirname, 'views'));
  app.set('view engine', 'ejs');
  app.get('/', (req, res) => res.render('index', {
    title: process.env.TITLE, cities: _.sortBy(cities, 'city'), span, script,
    now: moment().format('YYYY-MM-DD HH:mm') }));
  const port = Number(process.env.PORT || 8080);
  app.listen(port, '127.0.0.1', () => console.log(`listening on 127.0.0.1:${port}`));
}

main().catch((error) => { console.error(error); process.exit(1); });
"""
_VIEW = """<!doctype html>
<title><%= title %></title>
<h1><%= title %></h1>
<p><%= cities.length %> cities over <%= span %>, at <%= now %>.</p>
<table>
<% cities.forEach(function (c) { %><tr><td><%= c.city %></td><td><%= (c.sum / c.count).toFixed(2) %></td></tr>
<% }) %></table>
<script><%- script %></script>
"""
_PAGE_TS = """const rows: NodeListOf<HTMLTableRowElement> = document.querySelectorAll('tr');
rows.forEach((row: HTMLTableRowElement, index: number) => row.setAttribute('data-index', String(index)));
"""
_INITDB = """const fs = require('fs');
require('sql.js')().then((SQL) => {
  const db = new SQL.Database();
  db.run('CREATE TABLE readings (city TEXT, day INTEGER, temperature REAL)');
  const cities = ['Lisbon', 'Oslo', 'Nairobi', 'Lima', 'Osaka', 'Perth'];
  const insert = db.prepare('INSERT INTO readings VALUES (?, ?, ?)');
  let seed = 19;
  for (let day = 0; day < 2000; day++) {
    for (const city of cities) {
      seed = (seed * 1103515245 + 12345) % 2147483648;
      insert.run([city, day, Math.round((seed / 2147483648) * 400 - 50) / 10]);
    }
  }
  insert.free();
  fs.writeFileSync('/app/data/app.sqlite', Buffer.from(db.export()));
});
"""
_ENTRYPOINT = f"""#!/bin/sh
cd /app
export NODE_ENV=production TITLE="{TITLE}"
exec node server.js
"""


def node_modules(cache: Path | None = None) -> Path:
    """The app's node_modules, installed by npm once per DEPENDENCIES and kept in the cache."""
    key = hashlib.sha256(_PACKAGE_JSON.encode()).hexdigest()[:16]
    target = (cache or apps_cache()) / "npm" / key
    if (target / "node_modules").is_dir():
        return target / "node_modules"
    npm = shutil.which("npm")
    if npm is None:
        raise TestbedError("npm not found: the Node.js app's modules are installed with it; apt-get install npm")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        (tmp / "package.json").write_text(_PACKAGE_JSON)
        proc = subprocess.run(
            [
                npm,
                "install",
                "--omit=dev",
                "--ignore-scripts",
                "--no-package-lock",
                "--no-audit",
                "--no-fund",
                "--loglevel=error",
            ],
            cwd=tmp,
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise TestbedError(
                f"npm install failed: {proc.stderr.strip()[-500:]}; check that npm's registry is reachable"
            )
        os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target / "node_modules"


def setup(root: Path) -> None:
    app = root / "app"
    (app / "views").mkdir(parents=True)
    (app / "data").mkdir()
    (app / "package.json").write_text(_PACKAGE_JSON)
    (app / "server.js").write_text(_SERVER)
    (app / "views/index.ejs").write_text(_VIEW)
    (app / "views/page.ts").write_text(_PAGE_TS)
    shutil.copytree(node_modules(), app / "node_modules", symlinks=True)
    (app / "initdb.js").write_text(_INITDB)  # beside node_modules, where require() finds sql.js
    run_in(root, "node /app/initdb.js && rm /app/initdb.js", what="making the Node.js app's database")
    entrypoint = root / "usr/local/bin/start-node-web"
    entrypoint.write_text(_ENTRYPOINT)
    entrypoint.chmod(0o755)


APP = App(
    name="node-web",
    packages=PACKAGES,
    setup=setup,
    entrypoint=("/usr/local/bin/start-node-web",),
    ready_path="/",
    ready_text=f"<h1>{TITLE}</h1>",
    inputs=_PACKAGE_JSON.encode,
)
