"""StoragePath on a local directory and on S3 (a local moto endpoint): the same calls, the same results."""

import pyarrow as pa
import pytest

from raydebias.outputs import RunDir
from raydebias.storage import MARKER, StorageError, StoragePath, fetch, is_uri


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    if request.param == "local":
        return StoragePath.of(tmp_path / "root")
    s3 = request.getfixturevalue("s3")
    return StoragePath.of(s3.bucket() + "/root")


def test_uri_parsing_and_names(tmp_path):
    local = StoragePath.of(tmp_path / "a" / ".." / "b")
    assert local.is_local and local.uri == str(tmp_path / "b") and str(local / "c") == str(tmp_path / "b" / "c")
    assert StoragePath.of(f"file://{tmp_path}/b") == local
    assert is_uri("s3://bucket/x") and not is_uri("file:///x") and not is_uri("/x") and not is_uri("relative/x")
    with pytest.raises(StorageError, match="cannot open storage 'nope://x'"):
        StoragePath.of("nope://x")


def test_s3_uri_round_trips_with_its_query(s3):
    bucket = s3.bucket()
    p = StoragePath.of(f"{bucket}/run?region=us-east-1")
    assert not p.is_local and p.path == bucket.removeprefix("s3://") + "/run"
    q = p / "model"
    assert q.uri == f"{bucket}/run/model?region=us-east-1" and q.name == "model" and q.parent == p
    assert StoragePath.of(q.uri) == q
    with pytest.raises(TypeError, match="not a local path"):
        open(q)  # noqa: SIM115 - a remote path must never be taken for a local one


def test_files_text_parquet_and_glob(root):
    assert not root.exists() and root.glob("*.parquet") == [] and not root.complete
    (root / "a.txt").write_text("hé")
    (root / "d" / "x.parquet").write_parquet(pa.table({"i": [1, 2, 3]}))
    (root / "d" / "y.parquet").write_parquet(pa.table({"i": [4]}))
    (root / "d" / ".hidden.tmp").write_bytes(b"x")
    assert (root / "a.txt").read_text() == "hé" and (root / "a.txt").is_file() and (root / "d").is_dir()
    assert [p.name for p in root.glob("d/*.parquet")] == ["x.parquet", "y.parquet"]
    assert (root / "d").parquet_rows() == 4 and (root / "d" / "x.parquet").parquet_rows() == 3
    assert sorted((root / "d").read_table().column("i").to_pylist()) == [1, 2, 3, 4]  # hidden file skipped
    (root / "a.txt").write_text("again")  # overwrite whole
    assert (root / "a.txt").read_text() == "again"
    (root / "a.txt").unlink()
    (root / "a.txt").unlink(missing_ok=True)
    with pytest.raises(FileNotFoundError):
        (root / "a.txt").unlink()
    (root / "d").rmtree()
    assert not (root / "d").exists()


def test_replacing_commits_whole_directories_and_a_failure_is_never_complete(root):
    d = root / "table"
    with d.replacing() as t:
        (t / "part-0.parquet").write_parquet(pa.table({"i": [1]}))
    assert d.complete and [p.name for p in d.glob("*")] == [MARKER, "part-0.parquet"]
    with d.replacing() as t:  # replaced as a whole: the old part is gone
        (t / "part-1.parquet").write_parquet(pa.table({"i": [2]}))
    assert d.complete and d.read_table().column("i").to_pylist() == [2]
    with pytest.raises(RuntimeError, match="killed"), d.replacing() as t:
        (t / "part-2.parquet").write_parquet(pa.table({"i": [3]}))
        raise RuntimeError("killed mid-write")
    if d.is_local:  # the previous content survives a failed replacement
        assert d.complete and d.read_table().column("i").to_pylist() == [2]
        assert [p.name for p in root.glob("*")] == ["table"]  # no temporary left behind
    else:  # no directory rename on object stores: invalidated, never taken for complete
        assert not d.complete


def test_replacing_local_for_writers_that_need_a_directory(root, tmp_path):
    with (root / "model").replacing_local() as tmp:
        (tmp / "config.json").write_text("{}")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "w.bin").write_bytes(b"123")
    assert (root / "model").complete
    assert (root / "model" / "sub" / "w.bin").read_bytes() == b"123"
    got = (root / "model").download(tmp_path / "copy")
    assert (got / "config.json").read_text() == "{}" and (got / "sub" / "w.bin").read_bytes() == b"123"


def test_put_files_writes_each_file_whole(root, tmp_path):
    src = tmp_path / "report"
    src.mkdir()
    (src / "report.md").write_text("# r")
    (src / "plot.png").write_bytes(b"\x89PNG")
    assert [p.name for p in (root / "eval").put_files(src)] == ["plot.png", "report.md"]
    assert (root / "eval" / "report.md").read_text() == "# r"


def test_run_dir_on_s3_checks_the_bucket_early(s3):
    with pytest.raises(StorageError, match="cannot write to s3://no-such-bucket"):
        RunDir("s3://no-such-bucket/run")
    out = RunDir(s3.bucket() + "/run")
    out.update_stats("a", {"n": 1})
    out.update_stats("b", {"n": 2})
    assert {k: v for k, v in out.read_stats().items() if k != "_updated"} == {"a": {"n": 1}, "b": {"n": 2}}
    out.write_table(pa.table({"i": [1, 2]}), out.quarantine_dir("x"))
    assert out.quarantine_dir("x").complete and out.quarantine_dir("x").parquet_rows() == 2


def test_fetch_caches_a_remote_model_per_commit(s3, tmp_path, monkeypatch):
    monkeypatch.setenv("RAYDEBIAS_CACHE", str(tmp_path / "cache"))
    model = StoragePath.of(s3.bucket() + "/run/model")
    with model.replacing_local() as tmp:
        (tmp / "config.json").write_text('{"v": 1}')
    first = fetch(model.uri)
    assert (first / "config.json").read_text() == '{"v": 1}' and fetch(model.uri) == first  # cached
    with model.replacing_local() as tmp:  # committed again: a new copy
        (tmp / "config.json").write_text('{"v": 2}')
    second = fetch(model.uri)
    assert second != first and (second / "config.json").read_text() == '{"v": 2}'
    with pytest.raises(StorageError, match="not a directory"):
        fetch(model.uri + "/config.json")
