"""Safe extraction: tar-slip, zip-slip, absolute paths, links and bombs are refused."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
import tarfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

import pytest

from podserve.errors import IntegrityError
from podserve.storage.archive import ArchiveLimits, extract_archive
from podserve.storage.pull import pull
from tests.storage.transfer_servers import RangeServer

MiB = 1024 * 1024


def make_tar(path: Path, members: list[tarfile.TarInfo], data: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz" if path.name.endswith("gz") else "w") as tar:
        for info in members:
            content = data.get(info.name)
            if content is not None:
                info.size = len(content)
            tar.addfile(info, io.BytesIO(content) if content is not None else None)
    return path


def tar_member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    return info


@pytest.mark.parametrize(
    ("member", "why"),
    [
        (tar_member("../evil.txt"), "escapes the destination"),
        (tar_member("a/../../evil.txt"), "escapes the destination"),
        (tar_member("/etc/evil.txt"), "absolute path"),
        (tar_member("link", tarfile.SYMTYPE, "../../etc/passwd"), "link to '../../etc/passwd'"),
        (tar_member("link", tarfile.SYMTYPE, "/etc/passwd"), "escapes the destination"),
        (tar_member("link", tarfile.LNKTYPE, "../outside"), "escapes the destination"),
        (tar_member("inside", tarfile.SYMTYPE, "weights.bin"), "regular files only"),
        (tar_member("dev", tarfile.CHRTYPE), "not a regular file"),
        (tar_member("a\\..\\evil"), "backslash"),
    ],
)
def test_tar_slip_refused_before_anything_is_written(
    tmp_path: Path, member: tarfile.TarInfo, why: str
) -> None:
    data = {"ok.txt": b"fine", member.name: b"evil"} if member.isfile() else {"ok.txt": b"fine"}
    archive = make_tar(tmp_path / "m.tar.gz", [tar_member("ok.txt"), member], data)
    dest = tmp_path / "out" / "x"
    with pytest.raises(IntegrityError, match=why):
        extract_archive(archive, dest)
    assert list(dest.iterdir()) == []  # checked before writing: nothing extracted
    assert not (tmp_path / "evil.txt").exists()
    assert not (tmp_path / "out" / "evil.txt").exists()


def _zip(path: Path, entries: list[tuple[zipfile.ZipInfo | str, bytes]]) -> Path:
    with warnings.catch_warnings(), zipfile.ZipFile(path, "w") as zf:
        warnings.simplefilter("ignore")  # the duplicate-name case warns on purpose
        for info, content in entries:
            zf.writestr(info, content)
    return path


def test_zip_slip_absolute_and_symlink_refused(tmp_path: Path) -> None:
    link = zipfile.ZipInfo("link")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    cases = [
        ([("ok.txt", b"x"), ("../../evil.txt", b"evil")], "escapes the destination"),
        ([("/abs/evil.txt", b"evil")], "absolute path"),
        ([("C:/evil.txt", b"evil")], "absolute path"),
        ([(link, b"../../../etc/passwd")], "escapes the destination"),
        ([("a.txt", b"1"), ("a.txt", b"2")], "appears twice"),
    ]
    for i, (entries, why) in enumerate(cases):
        archive = _zip(tmp_path / f"m{i}.zip", entries)  # type: ignore[arg-type]
        with pytest.raises(IntegrityError, match=why):
            extract_archive(archive, tmp_path / f"out{i}")
        assert not (tmp_path / "evil.txt").exists()


def test_zip_member_inflating_beyond_its_declared_size_refused(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "bomb.zip", [("big.bin", b"\0" * 100_000)])
    raw = bytearray(archive.read_bytes())
    # Lower the declared size in the central directory (offset 24 of the entry).
    cd = raw.rfind(b"PK\x01\x02")
    raw[cd + 24 : cd + 28] = (10).to_bytes(4, "little")
    archive.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError, match=r"inflates beyond|not a readable archive"):
        extract_archive(archive, tmp_path / "out")


def test_malicious_archive_pull_publishes_nothing(tmp_path: Path) -> None:
    pub = tmp_path / "pub"
    pub.mkdir()
    make_tar(pub / "m.tar", [tar_member("../../../pwned.txt")], {"../../../pwned.txt": b"x"})
    with RangeServer(pub) as server, pytest.raises(IntegrityError, match="escapes"):
        pull(f"{server.url}/m.tar", tmp_path / "models" / "m" / "1")
    assert not (tmp_path / "models" / "m" / "1").exists()
    assert not list(tmp_path.rglob("pwned.txt"))


def test_top_directory_is_stripped(tmp_path: Path) -> None:
    archive = _zip(
        tmp_path / "m.zip", [("top/podserve.yaml", b"runtime: python\n"), ("top/w.bin", b"w")]
    )
    extract_archive(archive, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["podserve.yaml", "w.bin"]


def _zeros_tar(path: Path, members: dict[str, int]) -> Path:
    """A .tar.gz of files full of zeros: tiny on disk, ``sum(members)`` bytes extracted."""
    with tarfile.open(path, "w:gz") as tar:
        for name, size in members.items():
            info = tarfile.TarInfo(name)
            info.size = size
            tar.addfile(info, _Zeros(size))
    return path


class _Zeros(io.RawIOBase):
    def __init__(self, size: int) -> None:
        self.left = size

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n

    def readable(self) -> bool:
        return True


def test_a_small_archive_expanding_past_the_byte_cap_is_refused_before_writing(
    tmp_path: Path,
) -> None:
    bomb = _zeros_tar(tmp_path / "bomb.tar.gz", {"a.bin": 6 * MiB, "b.bin": 6 * MiB})
    assert bomb.stat().st_size < 100_000
    dest = tmp_path / "out"
    with pytest.raises(IntegrityError, match="archive_max_bytes"):
        extract_archive(bomb, dest, limits=ArchiveLimits(max_bytes=8 * MiB))
    assert list(dest.iterdir()) == []


def test_too_many_members_are_refused(tmp_path: Path) -> None:
    many = _zeros_tar(tmp_path / "many.tar.gz", {f"f{i}": 0 for i in range(50)})
    with pytest.raises(IntegrityError, match="more than 10 members"):
        extract_archive(many, tmp_path / "out", limits=ArchiveLimits(max_members=10))
    extract_archive(many, tmp_path / "ok", limits=ArchiveLimits(max_members=50))


@pytest.mark.parametrize(
    "members",
    [
        [("w.bin", b"w"), ("w.bin/inner", b"i")],  # a file, then a file under it
        [("w.bin", None), ("w.bin", b"w")],  # a directory, then a file of that name
        [("w.bin/inner", b"i"), ("w.bin", b"w")],  # a file under it, then the file
    ],
)
def test_a_file_and_a_directory_of_one_name_is_an_integrity_error(
    tmp_path: Path, members: list[tuple[str, bytes | None]]
) -> None:
    archive = tmp_path / "m.tar"
    with tarfile.open(archive, "w") as tar:
        for name, content in members:
            info = tarfile.TarInfo(name)
            if content is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    dest = tmp_path / "out"
    with pytest.raises(IntegrityError, match=r"'w\.bin' is both a file and a directory"):
        extract_archive(archive, dest)
    assert list(dest.iterdir()) == []


def test_the_cap_settings_reach_podserve_pull(tmp_path: Path) -> None:
    bomb = _zeros_tar(tmp_path / "bomb.tar.gz", {"a.bin": 4 * MiB})
    env = {**os.environ, "PODSERVE_ARCHIVE_MAX_BYTES": str(MiB)}
    dest = tmp_path / "models" / "m" / "1"
    done = subprocess.run(
        [sys.executable, "-m", "podserve", "pull", f"file://{bomb}", str(dest)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == IntegrityError.exit_code, done.stderr
    assert "archive_max_bytes" in done.stderr
    assert "Traceback" not in done.stderr
    assert not dest.exists()
    assert not (dest.parent / ".tmp-1" / "data").exists()
