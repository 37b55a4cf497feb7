import csv
import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raydebias import schema as S
from raydebias.config import DataConfig
from raydebias.data import (
    DataError,
    HubSource,
    detect_layout,
    find_duplicates,
    parse_records,
    read_split,
    record_to_row,
    resolve_source,
)
from raydebias.prompts import format_prompt, parse_prompt

POST = "My landlord Greg in Denver kept my $1,200 deposit after I moved out in June. " * 3
SUMMARY = "Landlord Greg in Denver kept my $1,200 deposit."


def carper(post=POST, summary=SUMMARY, sub="legaladvice", title="Landlord kept my deposit"):
    return {"prompt": format_prompt(post, sub, title), "label": " " + summary}


def webis(rid="abc1234", post=POST, summary=SUMMARY, sub="legaladvice"):
    body = f"{post}\n\nTL;DR: {summary}"
    return {"author": "someone", "body": body, "normalizedBody": body.replace("\n", " "), "subreddit": sub,
            "subreddit_id": "t5_2rawz", "id": rid, "content": post, "summary": summary}


def comparison(pid="t3_xyz", choice=1, policies=("sup2", "sup4"), texts=(" first one here", " second one here")):
    return {"info": {"id": pid, "post": POST, "title": "A title", "subreddit": "relationships"},
            "summaries": [{"text": t, "policy": p, "note": None} for t, p in zip(texts, policies, strict=True)],
            "choice": choice, "worker": "w1", "batch": "batch3", "split": "train"}


def write_jsonl(path: Path, records, raw_lines=()):
    with open(path, "wb") as f:
        for r in records:
            f.write(json.dumps(r).encode() + b"\n")
        for line in raw_lines:
            f.write(line + b"\n")
    return path


# --- prompts -------------------------------------------------------------------------------------

def test_prompt_roundtrip_and_missing_fields():
    p = format_prompt("a post\nwith two lines", "tifu", "My title")
    assert p == "SUBREDDIT: r/tifu\nTITLE: My title\nPOST: a post\nwith two lines\nTL;DR:"
    assert parse_prompt(p) == {"post": "a post\nwith two lines", "subreddit": "tifu", "title": "My title"}
    assert format_prompt("only post") == "POST: only post\nTL;DR:"
    assert parse_prompt("POST: only post\nTL;DR:") == {"post": "only post", "subreddit": None, "title": None}
    assert parse_prompt("SUBREDDIT: r/x\nTITLE: t\nno post here") is None


# --- pure record parsing -------------------------------------------------------------------------

def test_record_to_row_each_layout():
    row, rank = record_to_row(carper(), "carper")
    assert row["post"] == POST.strip() and row["summary"] == SUMMARY
    assert (row["subreddit"], row["title"], rank) == ("legaladvice", "Landlord kept my deposit", 0)
    assert row["id"].startswith("carper-") and row["id"] == record_to_row(carper(), "carper")[0]["id"]
    assert record_to_row(carper(summary="other"), "carper")[0]["id"] != row["id"]

    row, _ = record_to_row(webis(), "webis")
    assert (row["id"], row["post"], row["summary"], row["subreddit"], row["title"]) == (
        "abc1234", POST.strip(), SUMMARY, "legaladvice", None)

    row, rank = record_to_row(comparison(choice=1), "comparisons")
    assert (row["id"], row["summary"], row["title"], rank) == ("t3_xyz", "second one here", "A title", 1)
    row, rank = record_to_row(comparison(choice=1, policies=("ref", "sup4")), "comparisons")
    assert (row["summary"], rank) == ("first one here", 0)  # the human reference wins over the choice

    row, _ = record_to_row({"post": " p ", "summary": "s", "id": 17, "subreddit": "r/AskReddit"}, "plain")
    assert (row["id"], row["post"], row["subreddit"]) == ("17", "p", "AskReddit")
    assert record_to_row({"post": "p", "summary": "s"}, "plain")[0]["id"].startswith("row-")


def _parse(lines, layout="plain", max_post_chars=20_000):
    batch = pa.table({S.REC_FILE: ["f.jsonl"] * len(lines), S.REC_LINE: list(range(1, len(lines) + 1)),
                      S.REC_RAW: pa.array(lines, pa.binary())})
    return parse_records(batch, {"f.jsonl": layout}, max_post_chars).to_pylist()


@pytest.mark.parametrize("raw,reason,detail", [
    (b"", "blank_line", "empty line"),
    (b"   ", "blank_line", "empty line"),
    (b'{"post": "p", "summary": ', "invalid_json", "not valid JSON"),
    (b"[1, 2]", "not_an_object", "got list"),
    (b'{"post": "caf\xe9 bad byte", "summary": "s"}', "invalid_unicode", "'post'"),
    (b'{"post": "lone \\ud83d surrogate", "summary": "s"}', "invalid_unicode", "'post'"),
    (b'{"summary": "s"}', "missing_field", "'post' is missing"),
    (b'{"post": null, "summary": "s"}', "missing_field", "'post' is missing"),
    (b'{"post": "p"}', "missing_field", "'summary' is missing"),
    (b'{"post": "  ", "summary": "s"}', "empty_field", "'post' is empty"),
    (b'{"post": "p", "summary": ""}', "empty_field", "'summary' is empty"),
    (b'{"post": 42, "summary": "s"}', "non_string_field", "'post' is int"),
    (b'{"post": "p", "summary": ["a"]}', "non_string_field", "'summary' is list"),
    (b'{"post": "p", "summary": "s", "title": 3}', "non_string_field", "'title' is int"),
    (b'{"post": "p", "summary": "s", "id": {"a": 1}}', "non_string_field", "'id' is dict"),
    (b'{"post": "' + b"x" * 101 + b'", "summary": "s"}', "post_too_long", "101 chars > data.max_post_chars=100"),
])
def test_every_quarantine_reason(raw, reason, detail):
    (row,) = _parse([raw], max_post_chars=100)
    assert row[S.REASON] == reason
    assert detail in row[S.DETAIL]
    assert row[S.POST] is None and row[S.SUMMARY] is None
    assert row[S.RAW] == raw.decode("utf-8", "backslashreplace")  # the input is kept, readable
    assert reason in S.QUARANTINE_REASONS


def test_unparseable_prompt_and_carper_fields():
    rows = _parse([json.dumps({"prompt": "SUBREDDIT: r/x\nTITLE: t\nno post", "label": "s"}).encode(),
                   json.dumps({"prompt": "POST: \nTL;DR:", "label": "s"}).encode(),
                   json.dumps({"prompt": 5, "label": "s"}).encode()], layout="carper")
    assert [r[S.REASON] for r in rows] == ["unparseable_prompt", "empty_field", "non_string_field"]


def test_kept_rows_have_no_reason_and_one_row_per_input():
    rows = _parse([json.dumps({"post": "p", "summary": "s", "id": "a"}).encode(), b"not json"])
    assert [r[S.REASON] for r in rows] == ["", "invalid_json"]
    assert rows[0][S.RAW] == "" and rows[0][S.ID] == "a"


def test_find_duplicates_keeps_best_rank_then_first_in_file_order():
    meta = pa.table({S.ID: ["a", "b", "a", "a", None], S.REC_FILE: ["f2", "f1", "f1", "f1", "f1"],
                     S.REC_LINE: [1, 1, 9, 3, 4], S.REC_RANK: [0, 0, 1, 1, 0], S.REASON: ["", "", "", "", "invalid_json"]})
    dups = find_duplicates(meta).to_pylist()
    # rank 0 beats file order; among equal ranks f1:3 < f1:9
    assert sorted((d[S.REC_FILE], d[S.REC_LINE], d[S.REASON], d[S.DETAIL]) for d in dups) == [
        ("f1", 3, "duplicate_id", "id 'a' already kept from f2:1"), ("f1", 9, "duplicate_id", "id 'a' already kept from f2:1")]


# --- locating and detecting ----------------------------------------------------------------------

def test_resolve_source_forms(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [carper()])
    (tmp_path / "sub").mkdir()
    b = write_jsonl(tmp_path / "sub" / "b.jsonl", [carper()])
    (tmp_path / "notes.txt").write_text("ignored: not a data file")
    assert resolve_source(str(a)) == [str(a)]
    assert resolve_source(str(tmp_path)) == sorted([str(a), str(b)])
    assert resolve_source(str(tmp_path / "**" / "*.jsonl")) == sorted([str(a), str(b)])
    samples = resolve_source("sample:tldr/train")
    assert len(samples) == 3 and all(Path(p).exists() for p in samples)
    assert resolve_source("CarperAI/openai_summarize_tldr", "valid") == HubSource("CarperAI/openai_summarize_tldr", "valid")
    with pytest.raises(DataError, match="does not exist"):
        resolve_source(str(tmp_path / "missing.jsonl"))
    with pytest.raises(DataError, match="matches no files"):
        resolve_source(str(tmp_path / "nothing-*.jsonl"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no"):
        resolve_source(str(tmp_path / "empty"))
    with pytest.raises(DataError, match="no shipped sample"):
        resolve_source("sample:nope")
    with pytest.raises(DataError, match="unsupported file type"):
        resolve_source(str(tmp_path / "notes.txt"))


def test_sources_on_an_object_store(s3, tmp_path):
    """A data source on S3 (a local moto endpoint): a prefix lists its data files recursively as URIs,
    which open and detect like local files (JSONL, gzipped, Parquet)."""
    from raydebias.storage import StoragePath

    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    write_jsonl(src / "a.jsonl", [carper()])
    (src / "sub" / "b.jsonl.gz").write_bytes(gzip.compress(json.dumps(webis()).encode() + b"\n"))
    pq.write_table(pa.Table.from_pylist([{"prompt": "POST: x\nTL;DR:", "label": "y"}]), src / "sub" / "c.parquet")
    (src / "notes.txt").write_text("not data")
    (src / "_SUCCESS").write_text("")
    uri = s3.bucket() + "/tldr"
    StoragePath.of(uri).upload(src)
    files = resolve_source(uri)
    assert files == [f"{uri}/a.jsonl", f"{uri}/sub/b.jsonl.gz", f"{uri}/sub/c.parquet"]
    assert [detect_layout(f) for f in files] == ["carper", "webis", "carper"]
    assert resolve_source(f"{uri}/a.jsonl") == [f"{uri}/a.jsonl"]
    with pytest.raises(DataError, match="does not exist"):
        resolve_source(f"{uri}/missing.jsonl")
    with pytest.raises(DataError, match="unsupported file type"):
        resolve_source(f"{uri}/notes.txt")
    with pytest.raises(DataError, match="cannot read data source 'nope://x'"):
        resolve_source("nope://x")


def test_detect_layout_each_format(tmp_path):
    assert detect_layout(str(write_jsonl(tmp_path / "c.jsonl", [carper()]))) == "carper"
    assert detect_layout(str(write_jsonl(tmp_path / "w.json", [webis()]))) == "webis"
    assert detect_layout(str(write_jsonl(tmp_path / "x.jsonl", [comparison()], ))) == "comparisons"
    # the first line is broken: detection looks further
    assert detect_layout(str(write_jsonl(tmp_path / "p.jsonl", [{"post": "p", "summary": "s"}]))) == "plain"
    broken_first = tmp_path / "b.jsonl"
    broken_first.write_bytes(b"{oops\n" + json.dumps(carper()).encode() + b"\n")
    assert detect_layout(str(broken_first)) == "carper"
    arr = tmp_path / "arr.json"
    arr.write_text(json.dumps([webis(), webis("zzz")]))
    assert detect_layout(str(arr)) == "webis"
    pq.write_table(pa.Table.from_pylist([{"prompt": "POST: x\nTL;DR:", "label": "y"}]), tmp_path / "c.parquet")
    assert detect_layout(str(tmp_path / "c.parquet")) == "carper"
    (tmp_path / "p.csv").write_text("id,post,summary\n1,a post,a summary\n")
    assert detect_layout(str(tmp_path / "p.csv")) == "plain"
    gz = tmp_path / "g.jsonl.gz"
    gz.write_bytes(gzip.compress(json.dumps(webis()).encode() + b"\n"))
    assert detect_layout(str(gz)) == "webis"
    odd = write_jsonl(tmp_path / "odd.jsonl", [{"text": "t", "headline": "h"}])
    with pytest.raises(DataError, match=r"cannot detect the layout of .*odd.jsonl: keys \['headline', 'text'\]"):
        detect_layout(str(odd))


# --- through Ray Data ----------------------------------------------------------------------------

def _collect(res):
    return res.kept.take_all(), res.quarantine.take_all()


def test_each_layout_through_ray(ray_local, tmp_path):
    d = tmp_path / "mixed"
    d.mkdir()
    write_jsonl(d / "carper.jsonl", [carper(post=f"post {i} " * 20, summary=f"summary number {i}") for i in range(3)])
    write_jsonl(d / "webis.jsonl", [webis(rid=f"w{i}", post=f"webis {i} " * 20) for i in range(2)])
    write_jsonl(d / "cmp.jsonl", [comparison(pid="p1"), comparison(pid="p1", choice=0),
                                  comparison(pid="p2", policies=("ref", "sup2"))])
    pq.write_table(pa.Table.from_pylist([{"id": "pq1", "post": "parquet post", "summary": "parquet summary"}]),
                   d / "plain.parquet")
    with open(d / "plain.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "post", "summary", "title"])
        w.writerow(["csv1", "a csv post,\nwith a newline and a comma", "csv summary", "t"])
    res = read_split(str(d), "train", DataConfig(), "train")
    kept, quarantine = _collect(res)
    by_id = {r["id"]: r for r in kept}
    assert set(kept[0]) == set(S.SOURCE_COLUMNS)
    assert {"w0", "w1", "p1", "p2", "pq1", "csv1"} <= set(by_id)
    assert sum(1 for i in by_id if i.startswith("carper-")) == 3
    assert by_id["csv1"]["post"] == "a csv post,\nwith a newline and a comma"
    assert by_id["p2"]["summary"] == "first one here"  # ref policy
    assert by_id["p1"]["summary"] == "second one here"  # first comparison in file order wins
    assert [q["reason"] for q in quarantine] == ["duplicate_id"]
    assert quarantine[0]["id"] == "p1" and quarantine[0]["source_line"] == 2
    layouts = {Path(p).name: f["layout"] for p, f in res.stats["files"].items()}
    assert layouts == {"carper.jsonl": "carper", "webis.jsonl": "webis", "cmp.jsonl": "comparisons",
                       "plain.parquet": "plain", "plain.csv": "plain"}
    assert res.stats["rows_in"] == 10 == res.stats["kept"] + res.stats["quarantined"]


def test_bad_rows_are_quarantined_and_counts_add_up(ray_local, tmp_path):
    good = [{"id": f"g{i}", "post": f"post {i}", "summary": f"summary {i}"} for i in range(5)]
    raw_bad = [b"", b"{broken json", b'{"id": "u1", "post": "bad \xff byte", "summary": "s"}',
               b'{"id": "m1", "summary": "s"}', b'{"id": "e1", "post": "", "summary": "s"}',
               b'{"id": "n1", "post": 3.5, "summary": "s"}', b'{"id": "g0", "post": "again", "summary": "dup"}',
               b'"just a string"', b'{"id": "long", "post": "' + b"x" * 300 + b'", "summary": "s"}']
    f = write_jsonl(tmp_path / "dirty.jsonl", good, raw_bad)
    res = read_split(str(f), "train", DataConfig(max_post_chars=200), "train")
    kept, quarantine = _collect(res)
    assert sorted(r["id"] for r in kept) == [f"g{i}" for i in range(5)]
    reasons = sorted(q["reason"] for q in quarantine)
    assert reasons == sorted(["blank_line", "invalid_json", "invalid_unicode", "missing_field", "empty_field",
                              "non_string_field", "duplicate_id", "not_an_object", "post_too_long"])
    st = res.stats
    assert (st["rows_in"], st["kept"], st["quarantined"]) == (14, 5, 9)
    assert st["quarantined_by_reason"]["duplicate_id"] == 1
    assert st["files"][str(f)] == {"layout": "plain", "rows_in": 14, "kept": 5, "quarantined": 9}
    dup = next(q for q in quarantine if q["reason"] == "duplicate_id")
    assert dup["source_line"] == 12 and dup["detail"].endswith(f"{f}:1") and '"again"' in dup["raw"]
    bad_unicode = next(q for q in quarantine if q["reason"] == "invalid_unicode")
    assert "\\xff" in bad_unicode["raw"] and bad_unicode["split"] == "train" and bad_unicode["stage"] == "data"


def test_limit_counts_only_the_rows_read(ray_local, tmp_path):
    f = write_jsonl(tmp_path / "p.jsonl", [{"id": str(i), "post": "p", "summary": "s"} for i in range(10)])
    res = read_split(str(f), "train", DataConfig(limit=4), "train")
    assert (res.stats["rows_in"], res.stats["kept"]) == (4, 4) and len(res.kept.take_all()) == 4


def test_forced_layout_and_unknown_layout_errors(ray_local, tmp_path):
    f = write_jsonl(tmp_path / "odd.jsonl", [{"text": "t"}])
    with pytest.raises(DataError, match="odd.jsonl"):
        read_split(str(f), "train", DataConfig(), "train")
    # forcing a layout turns every record into a quarantined row instead (nothing silently dropped)
    res = read_split(str(f), "train", DataConfig(layout="plain"), "train")
    assert res.stats["quarantined_by_reason"] == {"missing_field": 1}


def test_hub_id_offline_is_a_clear_error(ray_local, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError) as e:
        read_split("CarperAI/openai_summarize_tldr", "train", DataConfig(), "train")
    msg = str(e.value)
    assert "CarperAI/openai_summarize_tldr" in msg and "HF_HUB_OFFLINE" in msg and "data.source" in msg


@pytest.mark.parametrize("name,content", [
    ("corrupt.jsonl.gz", b"\x1f\x8b\x08\x00 this is not gzip data at all"),
    ("corrupt.parquet", b"PAR1 not really parquet PAR1"),
])
@pytest.mark.parametrize("layout", ["auto", "plain"])
def test_unreadable_file_is_a_clear_error_naming_it(ray_local, tmp_path, name, content, layout):
    f = tmp_path / name
    f.write_bytes(content)
    with pytest.raises(DataError, match=rf"cannot read .*{name}"):
        read_split(str(f), "train", DataConfig(layout=layout), "train")


# --- train / held-out overlap (issue 13 item 6) --------------------------------------------------

def overlap_sources(tmp_path):
    """A training file and a held-out file (plain JSONL) sharing one id (e2) and one post (e3's, with
    other spacing and case, under another id); e1 is clean."""
    train = write_jsonl(tmp_path / "train.jsonl", [
        {"id": "t1", "post": "My roommate never pays rent on time.", "summary": "roommate late with rent"},
        {"id": "e2", "post": "A training post about a dog.", "summary": "dog post"},
    ])
    held_out = write_jsonl(tmp_path / "eval.jsonl", [
        {"id": "e1", "post": "A held-out post about my car.", "summary": "car post"},
        {"id": "e2", "post": "Another post, same id as a training row.", "summary": "id overlap"},
        {"id": "e3", "post": "my  roommate never pays RENT on time.", "summary": "post overlap"},
    ])
    return train, held_out


def test_held_out_rows_overlapping_training_rows_are_quarantined_and_counted(ray_local, tmp_path, caplog):
    from raydebias.config import load_config
    from raydebias.data import run_data_stage
    from raydebias.outputs import RunDir

    train, held_out = overlap_sources(tmp_path)
    cfg = load_config(str(Path(__file__).resolve().parents[1] / "jobs/configs/smoke.yaml"),
                      [f"data.source={train}", f"data.eval_source={held_out}", "data.limit=null"])
    assert cfg.data.eval_overlap == "drop"
    out = RunDir(tmp_path / "run")
    with caplog.at_level("WARNING", logger="raydebias.data"):
        stats = run_data_stage(cfg, out)
    assert any("2 held-out rows" in r.getMessage() and "overlaps_train" in r.getMessage() for r in caplog.records)
    ev = stats["eval"]
    assert (ev["rows_in"], ev["kept"], ev["quarantined"]) == (3, 1, 2)
    assert ev["quarantined_by_reason"] == {"overlaps_train": 2}
    assert ev["files"][str(held_out)] == {"layout": "plain", "rows_in": 3, "kept": 1, "quarantined": 2}
    assert (stats["train"]["kept"], stats["train"]["quarantined"]) == (2, 0)  # training rows stay
    kept = pq.read_table(str(out.sources_dir("eval"))).to_pylist()
    assert [r["id"] for r in kept] == ["e1"]
    q = {r["id"]: r for r in pq.read_table(str(out.quarantine_dir("data"))).to_pylist()}
    assert set(q) == {"e2", "e3"} and {r["reason"] for r in q.values()} == {"overlaps_train"}
    assert q["e2"]["split"] == "eval" and "id 'e2' is also a training row" in q["e2"]["detail"]
    assert "training row 't1'" in q["e3"]["detail"] and json.loads(q["e3"]["raw"])["summary"] == "post overlap"


def test_held_out_overlap_can_fail_the_stage_instead(ray_local, tmp_path):
    train, held_out = overlap_sources(tmp_path)
    cfg = DataConfig(eval_overlap="error")
    keys = read_split(str(train), "train", cfg, "train", want_keys=True).keys
    from raydebias.data import TrainKeys

    with pytest.raises(DataError, match=r"2 held-out rows overlap the training rows.*data.eval_overlap=drop"):
        read_split(str(held_out), "test", cfg, "eval", train=keys)
    # nothing shared: nothing quarantined, whatever the mode
    res = read_split(str(held_out), "test", cfg, "eval", train=TrainKeys.empty())
    assert res.stats["quarantined"] == 0 and res.keys is None
