"""The results store: one SQLite file per run folder, the single source for everything shown later.

Every measurement row carries its provenance (hardware, library versions, base
revision, dataset fingerprint, seed, time), so a number in a table or card can
always be traced to the run that produced it.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantforge.errors import ResultsError

STORE_NAME = "results.sqlite"
SCHEMA_VERSION = 2  # 2: measurements.memory_bandwidth (GB/s of the measuring machine)

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, started TEXT NOT NULL, finished TEXT, status TEXT NOT NULL,
    base_model TEXT NOT NULL, base_revision TEXT, base_hash TEXT NOT NULL, config TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS variants (
    name TEXT PRIMARY KEY, run_id TEXT NOT NULL, spec TEXT NOT NULL, method TEXT, bits REAL,
    format TEXT NOT NULL, path TEXT, artifact_key TEXT NOT NULL, steps TEXT NOT NULL,
    status TEXT NOT NULL, error TEXT, updated TEXT NOT NULL, calibration TEXT, precision TEXT
);
CREATE TABLE IF NOT EXISTS evaluations (
    variant TEXT NOT NULL, target TEXT NOT NULL, run_id TEXT NOT NULL, status TEXT NOT NULL,
    error TEXT, eval_key TEXT, cached INTEGER NOT NULL DEFAULT 0, updated TEXT NOT NULL,
    PRIMARY KEY (variant, target)
);
CREATE TABLE IF NOT EXISTS measurements (
    variant TEXT NOT NULL, target TEXT NOT NULL, metric TEXT NOT NULL,
    value REAL NOT NULL, unit TEXT NOT NULL, better TEXT NOT NULL, kind TEXT NOT NULL,
    evaluator TEXT NOT NULL, evaluator_version TEXT NOT NULL, details TEXT NOT NULL,
    hardware TEXT NOT NULL, python TEXT NOT NULL, libraries TEXT NOT NULL,
    base_revision TEXT NOT NULL, dataset_fingerprint TEXT NOT NULL, seed INTEGER NOT NULL,
    measured_at TEXT NOT NULL, run_id TEXT NOT NULL, eval_key TEXT NOT NULL,
    memory_bandwidth REAL,
    PRIMARY KEY (variant, target, metric)
);
"""


def _upgrade(db: sqlite3.Connection) -> None:
    """Bring a store written by an earlier quantforge up to :data:`SCHEMA_VERSION`."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(measurements)")}
    if "memory_bandwidth" not in columns:  # version 1
        db.execute("ALTER TABLE measurements ADD COLUMN memory_bandwidth REAL")
    db.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))


@dataclass(frozen=True)
class Row:
    """One measurement as read back."""

    variant: str
    target: str
    metric: str
    value: float
    unit: str
    better: str
    kind: str
    evaluator: str
    details: Mapping[str, Any]
    provenance: Mapping[str, Any]


class ResultsStore:
    """Open (or create) the store of a run folder."""

    def __init__(self, run_dir: Path, *, create: bool = False) -> None:
        self.path = run_dir / STORE_NAME
        if not create and not self.path.is_file():
            raise ResultsError(
                f"no results store in {str(run_dir)!r}",
                hint="run `quantforge run RECIPE` or `quantforge demo` to make one",
            )
        run_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(self.path, timeout=30)
            self.db.row_factory = sqlite3.Row
            self.db.executescript(SCHEMA)
            _upgrade(self.db)
            self.db.commit()
        except sqlite3.DatabaseError as exc:
            raise ResultsError(f"{self.path} is not a quantforge results store ({exc})") from None

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self.db:
            yield self.db

    # -- writing -------------------------------------------------------------

    def start_run(
        self, run_id: str, started: str, base: Mapping[str, Any], config: Mapping[str, Any]
    ) -> None:
        """Record a run as ``running``, with the host process that runs it (so that a later
        run can tell it was killed), and mark earlier runs whose host died as ``killed``."""
        import psutil

        host = {
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "created": psutil.Process().create_time(),
        }
        config = {**config, "host": host}
        self.mark_killed_runs(started)
        with self.transaction() as db:
            db.execute(
                "INSERT INTO runs VALUES (?, ?, NULL, 'running', ?, ?, ?, ?)",
                (
                    run_id,
                    started,
                    base["ref"],
                    base.get("revision"),
                    base["content_hash"],
                    json.dumps(config),
                ),
            )

    def mark_killed_runs(self, now: str) -> list[str]:
        """Runs still ``running`` whose host process on this machine is gone (killed by
        SIGKILL, the OOM killer, a power cut) become ``killed``; returns their ids."""
        killed = []
        for row in self.db.execute("SELECT run_id, config FROM runs WHERE status='running'"):
            host = json.loads(row["config"]).get("host") or {}
            if host.get("hostname") == socket.gethostname() and not _alive(
                host.get("pid"), host.get("created")
            ):
                killed.append(row["run_id"])
        with self.transaction() as db:
            for run_id in killed:
                db.execute(
                    "UPDATE runs SET finished=?, status='killed' WHERE run_id=? "
                    "AND status='running'",
                    (now, run_id),
                )
        return killed

    def finish_run(self, run_id: str, finished: str, status: str) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE runs SET finished=?, status=? WHERE run_id=?", (finished, status, run_id)
            )

    def record_variant(self, run_id: str, updated: str, **fields: Any) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO variants VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    fields["name"],
                    run_id,
                    fields["spec"],
                    fields.get("method"),
                    fields.get("bits"),
                    fields["format"],
                    fields.get("path"),
                    fields["artifact_key"],
                    json.dumps(fields.get("steps", [])),
                    fields["status"],
                    fields.get("error"),
                    updated,
                    json.dumps(fields.get("calibration")),
                    json.dumps(fields.get("precision")),
                ),
            )

    def record_evaluation(
        self,
        run_id: str,
        updated: str,
        variant: str,
        target: str,
        status: str,
        *,
        error: str | None = None,
        eval_key: str | None = None,
        cached: bool = False,
        measurements: Iterable[Mapping[str, Any]] = (),
    ) -> None:
        """Replace what is stored for (variant, target) with this evaluation's outcome."""
        with self.transaction() as db:
            db.execute("DELETE FROM measurements WHERE variant=? AND target=?", (variant, target))
            db.execute(
                "INSERT OR REPLACE INTO evaluations VALUES (?,?,?,?,?,?,?,?)",
                (variant, target, run_id, status, error, eval_key, int(cached), updated),
            )
            for m in measurements:
                prov = m["provenance"]
                db.execute(
                    "INSERT OR REPLACE INTO measurements VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        variant,
                        target,
                        m["metric"],
                        float(m["value"]),
                        m["unit"],
                        m["better"],
                        m.get("kind", "measured"),
                        m["evaluator"],
                        m["evaluator_version"],
                        json.dumps(m.get("details", {})),
                        prov["hardware"],
                        prov["python"],
                        json.dumps(prov["libraries"], sort_keys=True),
                        prov["base_revision"],
                        prov["dataset_fingerprint"],
                        int(prov["seed"]),
                        prov["measured_at"],
                        prov.get("run_id", run_id),
                        eval_key or "",
                        prov.get("memory_bandwidth_gbs"),
                    ),
                )

    # -- reading -------------------------------------------------------------

    def runs(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.db.execute("SELECT * FROM runs ORDER BY started")]

    def latest_run(self) -> dict[str, Any] | None:
        rows = self.runs()
        return rows[-1] if rows else None

    def variants(self) -> list[dict[str, Any]]:
        """Every variant: those of the latest run in its recipe's order (its jobs may have
        finished in any order), after those only earlier runs made."""
        rows = [dict(r) for r in self.db.execute("SELECT * FROM variants ORDER BY rowid")]
        latest = self.db.execute("SELECT config FROM runs ORDER BY started DESC LIMIT 1").fetchone()
        try:
            listed = json.loads(latest["config"]).get("variants") or [] if latest else []
            order = {str(v["name"]): i for i, v in enumerate(listed)}
        except (ValueError, TypeError, KeyError, AttributeError):
            order = {}
        rows.sort(key=lambda r: (1, order[r["name"]]) if r["name"] in order else (0, 0))
        for row in rows:
            row["steps"] = json.loads(row["steps"])
            row["calibration"] = json.loads(row["calibration"] or "null")
            row["precision"] = json.loads(row["precision"] or "null")
        return rows

    def evaluations(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.db.execute("SELECT * FROM evaluations ORDER BY rowid")]

    def measurements(self, variant: str | None = None, target: str | None = None) -> list[Row]:
        query = "SELECT * FROM measurements WHERE 1=1"
        args: list[Any] = []
        if variant is not None:
            query += " AND variant=?"
            args.append(variant)
        if target is not None:
            query += " AND target=?"
            args.append(target)
        out = []
        for r in self.db.execute(query + " ORDER BY rowid", args):
            out.append(
                Row(
                    variant=r["variant"],
                    target=r["target"],
                    metric=r["metric"],
                    value=r["value"],
                    unit=r["unit"],
                    better=r["better"],
                    kind=r["kind"],
                    evaluator=r["evaluator"],
                    details=json.loads(r["details"]),
                    provenance={
                        "hardware": r["hardware"],
                        "python": r["python"],
                        "libraries": json.loads(r["libraries"]),
                        "base_revision": r["base_revision"],
                        "dataset_fingerprint": r["dataset_fingerprint"],
                        "seed": r["seed"],
                        "measured_at": r["measured_at"],
                        "run_id": r["run_id"],
                        "evaluator_version": r["evaluator_version"],
                        "eval_key": r["eval_key"],
                        "memory_bandwidth_gbs": r["memory_bandwidth"],
                    },
                )
            )
        return out


def _alive(pid: Any, created: Any) -> bool:
    """Whether process ``pid``, started at ``created``, still runs on this machine (a
    recycled pid started later is another process)."""
    import psutil

    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        started = psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:  # another user's process: assume it is the host
        return True
    return not isinstance(created, int | float) or abs(started - created) < 1.0
