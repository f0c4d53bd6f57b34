"""Start and stop a private PostgreSQL cluster with initdb and pg_ctl.

As root, PostgreSQL refuses to run, so the binaries run as the ``postgres``
user over a data directory it owns. Nothing here touches a system cluster.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

INSTALL_HINT = (
    "PostgreSQL server binaries (initdb, pg_ctl) were not found on PATH or under "
    "/usr/lib/postgresql/*/bin. Install them (Debian/Ubuntu: apt-get install postgresql; "
    "macOS: brew install postgresql) or set TEST_DATABASE_URL to an existing server."
)


class ClusterError(RuntimeError):
    pass


def find_bindir() -> Path:
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if candidates:
        return Path(candidates[-1]).parent
    raise ClusterError(INSTALL_HINT)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LocalCluster:
    """A cluster in a temporary directory; ``hba`` lines replace pg_hba.conf."""

    superuser_password: str = "postgres"
    hba: list[str] = field(default_factory=lambda: [
        "local all all trust",
        "host all all 127.0.0.1/32 scram-sha-256",
        "host all all ::1/128 scram-sha-256",
    ])
    settings: dict[str, str] = field(default_factory=dict)
    ssl_cert: tuple[str, str] | None = None
    port: int = field(default_factory=free_port)
    base: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="tenant-proxy-pg-")))

    @property
    def datadir(self) -> Path:
        return self.base / "data"

    @property
    def logfile(self) -> Path:
        return self.base / "postgres.log"

    def dsn(self, user: str = "postgres", password: str | None = None,
            database: str = "postgres") -> str:
        password = self.superuser_password if password is None and user == "postgres" else password
        auth = f"{user}:{password}@" if password else f"{user}@"
        return f"postgresql://{auth}127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = [str(find_bindir() / args[0]), *args[1:]]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=self.base, check=False)
        if proc.returncode != 0:
            log_tail = self.logfile.read_text()[-2000:] if self.logfile.exists() else ""
            raise ClusterError(f"{' '.join(args[:2])} failed: {proc.stderr.strip()}\n{log_tail}")
        return proc

    def start(self) -> LocalCluster:
        find_bindir()
        self.base.mkdir(parents=True, exist_ok=True)
        pwfile = self.base / "pwfile"
        pwfile.write_text(self.superuser_password + "\n")
        if os.geteuid() == 0:
            shutil.chown(self.base, "postgres", "postgres")
            shutil.chown(pwfile, "postgres", "postgres")
        self._run("initdb", "-D", str(self.datadir), "-U", "postgres", "-E", "UTF8",
                  "--locale=C", "--auth-local=trust", "--auth-host=scram-sha-256",
                  f"--pwfile={pwfile}", "--no-sync")
        (self.datadir / "pg_hba.conf").write_text("\n".join(self.hba) + "\n")
        conf = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.base}'",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "300",
            "shared_buffers": "128MB",
            "password_encryption": "'scram-sha-256'",
            **_statement_statistics(),
            **self.settings,
        }
        if self.ssl_cert:
            conf.update(self._install_ssl_files(*self.ssl_cert))
        with (self.datadir / "postgresql.conf").open("a") as f:
            f.writelines(f"{k} = {v}\n" for k, v in conf.items())
        self._run("pg_ctl", "-D", str(self.datadir), "-l", str(self.logfile), "-w",
                  "-t", "60", "start")
        return self

    def _install_ssl_files(self, cert: str, key: str) -> dict[str, str]:
        """Copy certificate and key where the server user can read them, key mode 0600."""
        cert_copy, key_copy = self.base / "server.crt", self.base / "server.key"
        shutil.copyfile(cert, cert_copy)
        shutil.copyfile(key, key_copy)
        key_copy.chmod(0o600)
        if os.geteuid() == 0:
            for path in (cert_copy, key_copy):
                shutil.chown(path, "postgres", "postgres")
        return {"ssl": "on", "ssl_cert_file": f"'{cert_copy}'", "ssl_key_file": f"'{key_copy}'"}

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL as the superuser over the cluster's Unix socket."""
        proc = self._run("psql", "-h", str(self.base), "-p", str(self.port), "-U", "postgres",
                         "-d", database, "-v", "ON_ERROR_STOP=1", "-X", "-q", "-At", "-c", sql)
        return proc.stdout

    def stop(self, mode: str = "fast") -> None:
        if (self.datadir / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.datadir), "-m", mode, "-w", "stop")

    def restart(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.datadir), "-l", str(self.logfile), "-m", mode, "-w",
                  "-t", "60", "restart")

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.base, ignore_errors=True)


def _statement_statistics() -> dict[str, str]:
    """pg_stat_statements when the server has it: tests check that no plaintext of an
    encrypted column shows in it."""
    library = find_bindir().parent / "lib" / "pg_stat_statements.so"
    return {"shared_preload_libraries": "'pg_stat_statements'"} if library.exists() else {}
