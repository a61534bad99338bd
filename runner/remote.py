"""Run directories behind a pyarrow filesystem URL (`s3://bucket/prefix`, `gs://...`): a URL in,
its folders copied to and from a local folder out (the one module that talks to such storage).

The rest of the runner knows one layout on a local disk (`rundir`); a run whose output is a URL
works in a local staging folder and this module moves its files: a Ray worker pushes each part
file as it is written, the driver pulls the workers' parts to merge them and pushes the merged
run, and `read_results(URL)` pulls a run to read it. Credentials come from the environment the
way pyarrow reads them (AWS_ACCESS_KEY_ID, a node's role, GOOGLE_APPLICATION_CREDENTIALS); a URL
holding a key is refused, so that no key reaches run.json or a message.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

from .errors import ConfigError, ResultsError

if TYPE_CHECKING:
    import pyarrow.fs as pafs

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
# query keys of pyarrow's URIs that carry a secret: refused, so the URL can be stored
_SECRET_KEYS = frozenset({"access_key", "secret_key", "session_token", "credentials",
                          "token", "password"})
SKIPPED_NAMES = frozenset({".lock"})  # a local lock means nothing elsewhere
COPY_BYTES = 8 * 1024 * 1024         # files are copied in pieces of this size


def is_url(target: object) -> bool:
    """Whether an output (`--out`, `output.dir`) is a filesystem URL rather than a folder."""
    return isinstance(target, str) and bool(_SCHEME.match(target)) \
        and not target.startswith("file://")


def check_url(url: str) -> str:
    """`url` if it can be written into run.json: no credentials in it (ValueError else)."""
    scheme, _, rest = url.partition("://")
    location, _, query = rest.partition("?")
    if "@" in location.split("/", 1)[0]:
        raise ValueError(f"{scheme}:// URL holds credentials (got user:key@, not shown): give "
                         "them in the environment (e.g. AWS_ACCESS_KEY_ID, "
                         "AWS_SECRET_ACCESS_KEY), not in the URL")
    secret = sorted({k for k, _ in parse_qsl(query)} & _SECRET_KEYS)
    if secret:
        raise ValueError(f"{scheme}:// URL holds credentials (got {', '.join(secret)}=, not "
                         "shown): give them in the environment (e.g. AWS_SECRET_ACCESS_KEY), "
                         "not in the URL")
    if not location.strip("/"):
        raise ValueError(f"{url!r} names no bucket or folder: e.g. s3://bucket/prefix")
    return url


def child(url: str, *names: str) -> str:
    """`url` with `names` appended to its path (its query, e.g. `endpoint_override`, kept)."""
    base, mark, query = url.partition("?")
    return "/".join([base.rstrip("/"), *names]) + mark + query


@dataclass(frozen=True, slots=True)
class Remote:
    """A folder behind a URL."""

    url: str

    def _open(self) -> tuple[pafs.FileSystem, str]:
        import pyarrow as pa
        import pyarrow.fs as pafs

        try:
            fs, path = pafs.FileSystem.from_uri(self.url)
            return fs, str(path)
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise ConfigError(f"{self.url}: not a usable output URL ({_first_line(exc)})") \
                from None

    def child(self, *names: str) -> Remote:
        return Remote(child(self.url, *names))

    def push(self, local: Path, names: list[str] | None = None) -> None:
        """Copy the files under `local` (or just `names`, relative to it) to this folder."""
        fs, base = self._open()
        files = [local / n for n in names] if names is not None else \
            sorted(p for p in local.rglob("*") if p.is_file())
        for path in files:
            if path.name in SKIPPED_NAMES or path.name.endswith(".tmp"):
                continue
            target = f"{base}/{path.relative_to(local).as_posix()}"
            try:  # streamed (a merged run can be large); S3 shows the object once whole
                with path.open("rb") as src, fs.open_output_stream(target) as out:
                    shutil.copyfileobj(src, out, COPY_BYTES)
            except (OSError, ValueError) as exc:
                raise ResultsError(f"{child(self.url, path.relative_to(local).as_posix())}: "
                                   f"cannot write ({_first_line(exc)})") from None

    def pull(self, local: Path) -> list[Path]:
        """Copy every file of this folder (and its subfolders) under `local`; the files."""
        import pyarrow.fs as pafs

        fs, base = self._open()
        try:
            infos = fs.get_file_info(pafs.FileSelector(base, recursive=True,
                                                       allow_not_found=True))
        except (OSError, ValueError) as exc:
            raise ResultsError(f"{self.url}: cannot list ({_first_line(exc)})") from None
        got = []
        for info in infos:
            if info.type != pafs.FileType.File:
                continue
            path = local / info.path[len(base):].lstrip("/")
            path.parent.mkdir(parents=True, exist_ok=True)
            # copied beside it, then renamed over it: a reader of the folder (another pull of
            # the same lost worker's folder, a scan) never sees a file half copied
            partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
            try:
                with fs.open_input_stream(info.path) as src, partial.open("wb") as dst:
                    shutil.copyfileobj(src, dst, COPY_BYTES)
                os.replace(partial, path)
            except (OSError, ValueError) as exc:
                partial.unlink(missing_ok=True)
                raise ResultsError(f"{self.url}: cannot read {info.base_name} "
                                   f"({_first_line(exc)})") from None
            got.append(path)
        return got

    def folders(self) -> list[str]:
        """The names of the folders right under this one."""
        import pyarrow.fs as pafs

        fs, base = self._open()
        try:
            infos = fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
        except (OSError, ValueError) as exc:
            raise ResultsError(f"{self.url}: cannot list ({_first_line(exc)})") from None
        return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)

    def delete(self) -> None:
        """Remove this folder and everything under it (a merged run's worker parts)."""
        fs, base = self._open()
        try:
            fs.delete_dir(base)
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            raise ResultsError(f"{self.url}: cannot delete ({_first_line(exc)})") from None


def refuse_local(target: object) -> None:
    """A run that is not on Ray cannot write to a URL yet: one line saying what to do."""
    if is_url(target):
        raise ConfigError(f"output {target}: only a Ray run writes to a filesystem URL: add "
                          "--ray, or give a local folder (--out DIR, output.dir)")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def run_url_id(run_url: str) -> str:
    """The run id a run's URL ends with."""
    return run_url.partition("?")[0].rstrip("/").rsplit("/", 1)[-1]


def pull_run(root_url: str | None, job_name: str, spec: str, local_root: Path
             ) -> tuple[Path, str]:
    """A run behind a URL (`latest` of the job under `root_url`, or a run's own URL) copied to
    `local_root/<job>/<run id>`: (that folder, the run's URL)."""
    from .rundir import RUN_JSON

    if is_url(spec):
        run_url = check_url(spec)
    else:
        assert root_url is not None
        runs = Remote(child(root_url, job_name)).folders()
        if spec != "latest" or not runs:
            raise ResultsError(f"--resume {spec}: no run of job {job_name!r} under "
                               f"{child(root_url, job_name)} (give latest or a run's URL)")
        run_url = child(root_url, job_name, runs[-1])
    local = local_root / job_name / run_url_id(run_url)
    Remote(run_url).pull(local)
    if not (local / RUN_JSON).is_file():
        raise ResultsError(f"--resume {spec}: not a run directory (no {RUN_JSON} at {run_url})")
    return local, run_url


def publish_run(run_dir: Path, remote: Remote) -> None:
    """A merged run's files to its URL: the rows first, then the workers' parts (now in the
    rows) deleted, then run.json, so a reader never sees a row twice."""
    from .rundir import RUN_JSON, SHARDS

    names = [p.relative_to(run_dir).as_posix() for p in sorted(run_dir.rglob("*"))
             if p.is_file() and p.name != RUN_JSON
             and p.relative_to(run_dir).parts[0] != SHARDS]
    remote.push(run_dir, names)
    remote.child(SHARDS).delete()
    remote.push(run_dir, [RUN_JSON])
