"""Safe extraction: tar-slip, zip-slip, absolute paths, links and bombs are refused."""

from __future__ import annotations

import io
import stat
import tarfile
import warnings
import zipfile
from pathlib import Path

import pytest

from podserve.errors import IntegrityError
from podserve.storage.archive import extract_archive
from podserve.storage.pull import pull
from tests.storage.transfer_servers import RangeServer


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
