"""Named datasets and downloads: turn a path, an http(s) URL or a dataset name into a local file.

`DATASETS` is plain data (name -> `DatasetSource`); `resolve_source` takes another table through its
`registry` argument, which is how tests point names at a local server and how a user adds a mirror.
Downloads stream into a temporary file in the cache folder, are checked (length, sha256 where known) and
only then renamed into place, so an interrupted or corrupt download never leaves a cached file.

Environment: `TINYROBERTA_ES_CACHE` (cache root, default `~/.cache/tinyroberta_es`; files go under
`datasets/`), `TINYROBERTA_ES_OFFLINE=1` or `HF_HUB_OFFLINE=1` (never touch the network).
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import BinaryIO

from tinyroberta_es import __version__
from tinyroberta_es.atomic import atomic_path
from tinyroberta_es.errors import UserError

log = logging.getLogger(__name__)

CACHE_ENV = "TINYROBERTA_ES_CACHE"
OFFLINE_ENVS = ("TINYROBERTA_ES_OFFLINE", "HF_HUB_OFFLINE")
TIMEOUT_S = 60.0
CHUNK = 1 << 20


@dataclass(frozen=True)
class DatasetSource:
    """Where a named dataset comes from: a URL (optionally a member of a zip there) or a packaged file."""

    name: str
    description: str
    url: str = ""  # http(s) URL of the file, or of the zip archive holding it
    sha256: str | None = None  # of the downloaded file (the archive, for a zip member), where known
    member: str | None = None  # path of the SQuAD file inside the zip archive at `url`
    resource: str | None = None  # path of a file shipped inside the tinyroberta_es package
    articles: tuple[int, int] | None = None  # only articles start..stop-1 of the file (a named split)

    def __post_init__(self) -> None:
        if bool(self.url) == bool(self.resource):
            raise ValueError(f"dataset {self.name!r}: give exactly one of url and resource")
        if self.member and not self.url:
            raise ValueError(f"dataset {self.name!r}: member needs the url of an archive")

    @property
    def filename(self) -> str:
        """Name of the cached SQuAD file."""
        return f"{self.name}.json.gz" if (self.member or self.url).endswith(".gz") else f"{self.name}.json"


# Pinned to the commits described in ../shared/data/*/SOURCE.md, so the sha256s there stay valid.
_SQUAD_ES = "https://raw.githubusercontent.com/ccasimiro88/TranslateAlignRetrieve/c84784219785c1fc05884b26081d9b7b4156c019"
_XQUAD = "https://raw.githubusercontent.com/google-deepmind/xquad/7d30520c717524000f0d9d2f9c10a069acd9d285"
_MLQA = "https://dl.fbaipublicfiles.com/MLQA/MLQA_V1.zip"
_SQAC = "https://huggingface.co/datasets/PlanTL-GOB-ES/SQAC/resolve/main"

_SOURCES = (
    DatasetSource(
        "squad_es_v1.1_train",
        "SQuAD-es v1.1 train (TAR machine translation; 87,595 questions)",
        f"{_SQUAD_ES}/SQuAD-es-v1.1/train-v1.1-es.json",
    ),
    DatasetSource(
        "squad_es_v1.1_dev",
        "SQuAD-es v1.1 dev (10,570 questions)",
        f"{_SQUAD_ES}/SQuAD-es-v1.1/dev-v1.1-es.json",
    ),
    DatasetSource(
        "squad_es_v2.0_train",
        "SQuAD-es v2.0 train (with unanswerable questions)",
        f"{_SQUAD_ES}/SQuAD-es-v2.0/train-v2.0-es.json",
    ),
    DatasetSource("squad_es_v2.0_dev", "SQuAD-es v2.0 dev", f"{_SQUAD_ES}/SQuAD-es-v2.0/dev-v2.0-es.json"),
    DatasetSource(
        "squad_es_v1.1_dev_small",
        "SQuAD-es v1.1 dev, small (6,583 questions; shares ids with XQuAD)",
        f"{_SQUAD_ES}/SQuAD-es-v1.1/dev-v1.1-es_small.json",
        sha256="f7371e5800acc27bdb1bc213edc0126029007b335bb78ba8ab2ad2529227fdd7",
    ),
    DatasetSource(
        "squad_es_v2.0_dev_small",
        "SQuAD-es v2.0 dev, small (7,134 questions, 3,256 unanswerable)",
        f"{_SQUAD_ES}/SQuAD-es-v2.0/dev-v2.0-es_small.json",
        sha256="4d01dbbff861700873ac88cc32cd80b5d328d4a968bae5f08318133c00c7b229",
    ),
    DatasetSource(
        "xquad_es",
        "XQuAD Spanish (1,190 questions, professional translation; evaluation only)",
        f"{_XQUAD}/xquad.es.json",
        sha256="dcbae93ec3a9f4b9e78fd834a171d6f96c1a875e10e15b7530b7e4ef4971e37e",
    ),
    DatasetSource(
        "mlqa_es_dev",
        "MLQA dev, Spanish context and question",
        _MLQA,
        member="MLQA_V1/dev/dev-context-es-question-es.json",
    ),
    DatasetSource(
        "mlqa_es_test",
        "MLQA test, Spanish context and question",
        _MLQA,
        member="MLQA_V1/test/test-context-es-question-es.json",
    ),
    DatasetSource("sqac_train", "SQAC train (Spanish QA corpus, PlanTL-GOB-ES)", f"{_SQAC}/train.json"),
    DatasetSource("sqac_dev", "SQAC dev", f"{_SQAC}/dev.json"),
    DatasetSource("sqac_test", "SQAC test", f"{_SQAC}/test.json"),
    DatasetSource(
        "sample",
        "a few Spanish questions shipped with the package, for demos and smoke tests",
        resource="resources/sample_es.json",
    ),
    # A held-out split of the sample by article, so the offline recipe never scores its training questions.
    DatasetSource(
        "sample_train",
        "the sample's first 24 articles (480 questions, 96 unanswerable): training in recipes/sample.yaml",
        resource="resources/sample_es.json",
        articles=(0, 24),
    ),
    DatasetSource(
        "sample_dev",
        "the sample's last 6 articles (120 questions, 24 unanswerable): evaluation in recipes/sample.yaml",
        resource="resources/sample_es.json",
        articles=(24, 30),
    ),
)
DATASETS: dict[str, DatasetSource] = {source.name: source for source in _SOURCES}
"""Named datasets: plain data; pass another mapping as `registry` to add names or point them elsewhere."""


def normalize_name(name: str) -> str:
    """Registry key for a user-typed name: case-insensitive, `-` accepted for `_`."""
    return name.strip().lower().replace("-", "_")


def named_source(
    source: str | Path, registry: Mapping[str, DatasetSource] | None = None
) -> DatasetSource | None:
    """The registry entry that `source` names, or None for paths and URLs (an existing path wins)."""
    text = str(source).strip()
    if not text or Path(text).expanduser().exists():
        return None
    table = {normalize_name(k): v for k, v in (DATASETS if registry is None else registry).items()}
    return table.get(normalize_name(text))


def cache_dir() -> Path:
    """The dataset cache: `$TINYROBERTA_ES_CACHE/datasets`, else `~/.cache/tinyroberta_es/datasets`."""
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "tinyroberta_es"
    return Path(root).expanduser() / "datasets"


def resolve_source(source: str | Path, *, registry: Mapping[str, DatasetSource] | None = None) -> Path:
    """A local file for `source`: an existing path, an http(s) URL (downloaded) or a name in `registry`.

    Paths and URLs may name SQuAD JSON or JSON Lines files (`loading.load_dataset` tells them apart).

    `registry` defaults to `DATASETS`. An existing path wins over a name. Anything else is a `UserError`
    that lists the names.
    """
    registry = DATASETS if registry is None else registry
    text = str(source).strip()
    path = Path(text).expanduser()
    if text and path.exists():
        if path.is_dir():
            raise UserError(f"{text}: is a folder; pass a SQuAD .json(.gz) or a JSON Lines .jsonl(.gz) file")
        return path
    if text.lower().startswith(("http://", "https://")):
        return fetch_url(text)
    entry = named_source(text, registry)
    if entry is not None:
        return fetch_dataset(entry)
    names = ", ".join(registry)
    if isinstance(source, Path) or _looks_like_path(text):
        raise UserError(
            f"{text}: file does not exist; pass an existing .json(.gz) or .jsonl(.gz) file, an http(s) URL, "
            f"or a dataset name ({names})"
        )
    raise UserError(
        f"unknown dataset {text!r}: choose one of {names}, "
        "or pass an existing .json/.json.gz file or an http(s) URL (or a .jsonl file of questions)"
    )


def fetch_dataset(entry: DatasetSource) -> Path:
    """The cached file of a named dataset, downloading (and extracting) it first if needed."""
    if entry.resource:
        return _package_file(entry)
    dest = cache_dir() / entry.filename
    if dest.is_file():
        log.debug("dataset %s: using cached %s", entry.name, dest)
        return dest
    if not entry.member:
        return download(entry.url, dest, sha256=entry.sha256, what=f"dataset {entry.name!r}")
    archive = cache_dir() / "archives" / _url_basename(entry.url)
    if not archive.is_file():
        download(entry.url, archive, sha256=entry.sha256, what=f"dataset {entry.name!r}")
    return extract_member(archive, entry.member, dest)


def fetch_url(url: str) -> Path:
    """The cached copy of an arbitrary http(s) URL, downloading it first if needed."""
    digest = hashlib.sha256(url.encode("utf-8")).hexdigest()[:12]
    dest = cache_dir() / "urls" / f"{digest}-{_url_basename(url)}"
    if dest.is_file():
        log.debug("%s: using cached %s", url, dest)
        return dest
    return download(url, dest, what="this URL")


def download(url: str, dest: Path, *, sha256: str | None = None, what: str = "this file") -> Path:
    """Stream `url` into `dest` atomically, with a progress bar; check its length and sha256 (if given)."""
    offline = next((var for var in OFFLINE_ENVS if _truthy(os.environ.get(var))), None)
    if offline:
        raise UserError(
            f"{what} is not in the cache and offline mode is on ({offline}={os.environ[offline]}): "
            f"download {url} on a machine with a network, save it as {dest}, and run again "
            "(or pass the file's path instead)"
        )
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(
            f"cannot create the cache folder {dest.parent} ({err.strerror}); set {CACHE_ENV} "
            "to a writable folder"
        ) from None
    log.info("downloading %s to %s", url, dest)
    request = urllib.request.Request(url, headers={"User-Agent": f"tinyroberta-es/{__version__}"})
    hint = "check the network (or the URL), or download the file yourself and pass its path"
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response, atomic_path(dest) as tmp:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            digest, size = _stream(response, tmp, total, dest.name)
            if total is not None and size != total:
                raise UserError(
                    f"download of {url} stopped after {size:,} of {total:,} bytes; nothing was "
                    f"cached; run again, or {hint}"
                )
            if sha256 and digest != sha256.lower():
                raise UserError(
                    f"{url}: sha256 {digest} differs from the expected {sha256}: the file changed "
                    "upstream or arrived corrupt; nothing was cached; run again, or download it "
                    "yourself, check it and pass its path"
                )
    except urllib.error.HTTPError as err:
        raise UserError(f"cannot download {url}: HTTP {err.code} {err.reason}; {hint}") from None
    except urllib.error.URLError as err:
        raise UserError(f"cannot download {url}: {err.reason}; {hint}") from None
    except (http.client.HTTPException, OSError) as err:  # timeouts, resets, TLS errors, a full disk
        raise UserError(f"cannot download {url}: {type(err).__name__}: {err}; {hint}") from None
    return dest


def extract_member(archive: Path, member: str, dest: Path) -> Path:
    """Copy `member` of the zip `archive` to `dest` atomically."""
    try:
        with zipfile.ZipFile(archive) as zf:
            if member not in zf.namelist():
                found = [n for n in zf.namelist() if n.endswith(".json")]
                shown = ", ".join(found[:8]) + (", ..." if len(found) > 8 else "")
                raise UserError(
                    f"{archive}: no member {member!r} in the archive (its .json files: {shown or 'none'})"
                )
            log.info("extracting %s from %s", member, archive)
            with zf.open(member) as src, atomic_path(dest) as tmp, open(tmp, "wb") as out:
                shutil.copyfileobj(src, out, CHUNK)
    except zipfile.BadZipFile as err:
        archive.unlink(missing_ok=True)
        raise UserError(
            f"{archive}: not a valid zip archive ({err}); it was deleted: run again to download it again"
        ) from None
    return dest


def _stream(response: BinaryIO, tmp: Path, total: int | None, label: str) -> tuple[str, int]:
    """Copy `response` into `tmp` with a progress bar; return the sha256 hex digest and the size."""
    from tqdm.auto import tqdm

    digest = hashlib.sha256()
    size = 0
    with (
        open(tmp, "wb") as out,
        tqdm(
            total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label, disable=None, leave=False
        ) as bar,
    ):
        while chunk := response.read(CHUNK):
            out.write(chunk)
            digest.update(chunk)
            size += len(chunk)
            bar.update(len(chunk))
    return digest.hexdigest(), size


def _package_file(entry: DatasetSource) -> Path:
    """A file shipped inside the package, as a real path (copied to the cache if installed zipped)."""
    resource = files("tinyroberta_es").joinpath(*str(entry.resource).split("/"))
    if not resource.is_file():
        raise UserError(
            f"dataset {entry.name!r}: {entry.resource} is missing from this installation of "
            "tinyroberta-es; reinstall the package"
        )
    if isinstance(resource, Path):
        return resource
    dest = cache_dir() / f"{entry.name}-{__version__}.json"
    if not dest.is_file():
        with atomic_path(dest) as tmp:
            tmp.write_bytes(resource.read_bytes())
    return dest


def _url_basename(url: str) -> str:
    name = Path(urllib.parse.urlparse(url).path).name
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in name)
    return safe or "download"


def _looks_like_path(text: str) -> bool:
    return (
        "/" in text
        or "\\" in text
        or text.startswith(("~", "."))
        or text.lower().endswith((".json", ".jsonl", ".ndjson", ".gz", ".zip"))
    )


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}
