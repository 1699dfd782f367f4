"""Question and label files in every format, read through `datasets`: columns, normalisation, and
every bad input named by file, row and column."""

from __future__ import annotations

import json

import datasets
import pytest

from fedgrpo.cli import main
from fedgrpo.data.files import Columns, DataFileError, Row, deduplicate, normalise, read_rows
from fedgrpo.data.make import make_rows, write_rows

from .conftest import write_jsonl

ROWS = [
    {"question": "What is 2 + 2?", "answer": "4", "domain": "arith"},
    {"question": "Capital of France?", "answer": "Paris", "domain": "geo"},
    {"question": "Leading zeros?", "answer": "007", "domain": "codes"},
]


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet", "folder", "dict-folder"])
def test_each_format_reads_the_same_rows(tmp_path, fmt):
    table = datasets.Dataset.from_list(ROWS)
    path = tmp_path / f"labels.{fmt}"
    if fmt == "jsonl":
        write_jsonl(path, ROWS)
    elif fmt == "csv":
        table.to_csv(str(path), index=False)
    elif fmt == "parquet":
        table.to_parquet(str(path))
    elif fmt == "folder":
        table.save_to_disk(str(path))
    else:
        datasets.DatasetDict({"train": table, "test": table.select([0])}).save_to_disk(str(path))
    rows = read_rows(path, labelled=True)
    assert [(r.question, r.answer, r.domain, r.system, dict(r.metadata)) for r in rows] == [
        ("What is 2 + 2?", "4", "arith", None, {}),
        ("Capital of France?", "Paris", "geo", None, {}),
        ("Leading zeros?", "007", "codes", None, {}),  # CSV keeps the text: 007, not 7
    ]


def test_numbers_become_their_decimal_spelling_and_prompt_is_a_question_column(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [{"prompt": "a", "answer": 7.0}, {"prompt": "b", "answer": 2.5}])
    rows = read_rows(path, labelled=True)
    assert [(r.question, r.answer) for r in rows] == [("a", "7"), ("b", "2.5")]
    assert rows[1].where == f"{path}, row 2 (line 2)"


def test_columns_are_configurable_and_metadata_and_system_are_read(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [
        {"q": "x?", "label": "1", "area": "a", "system": "Be brief.", "metadata": json.dumps({"k": [1]})},
        {"q": "y?", "label": "2", "area": "", "system": None, "metadata": {"k": 2}},
    ])
    rows = read_rows(path, Columns(question="q", answer="label", domain="area"), labelled=True)
    assert [(r.question, r.answer, r.domain, r.system, dict(r.metadata)) for r in rows] == [
        ("x?", "1", "a", "Be brief.", {"k": [1]}),
        ("y?", "2", None, None, {"k": 2}),
    ]


def test_unlabelled_files_have_no_answers_and_labelled_reading_refuses_them(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [{"question": "x?"}])
    assert read_rows(path) == [Row("x?", where=f"{path}, row 1 (line 1)")]
    with pytest.raises(DataFileError, match=r"no answer column 'answer'; its columns are \['question'\]"):
        read_rows(path, labelled=True)


def test_normalisation_collapses_whitespace_and_unicode_forms_but_keeps_case():
    assert normalise("  What\tis\n 2 +\u00a02? ") == "What is 2 + 2?"
    assert normalise("\uff21\uff22") == "AB"  # full-width letters (NFKC)
    assert normalise("Paris") != normalise("paris")
    rows = [Row("What is 2+2?"), Row(" What  is 2+2? "), Row("what is 2+2?")]
    kept, dropped = deduplicate(rows)
    assert kept == [rows[0], rows[2]] and dropped == 1


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("bad.jsonl", '{"question": "a", "answer": "1"}\n{"question": "b", "answer":\n',
         r"bad.jsonl: cannot read it as json: line 2 is not JSON"),
        ("list.jsonl", '{"question": "a"}\n[1, 2]\n', r"line 2 is a JSON list, expected an object"),
        ("empty-q.jsonl", '{"question": "a", "answer": "1"}\n{"question": " ", "answer": "2"}\n',
         r"empty-q.jsonl, row 2 \(line 2\): column 'question' is empty; every row needs a question"),
        ("empty-a.jsonl", '{"question": "a", "answer": "1"}\n{"question": "b", "answer": null}\n',
         r"empty-a.jsonl, row 2 \(line 2\): column 'answer' is empty; every labelled row needs an answer"),
        ("noq.jsonl", '{"text": "a", "answer": "1"}\n',
         r"noq.jsonl: no question column 'question' \(nor 'prompt'\); its columns are \['text', 'answer'\]"),
        ("meta.jsonl", '{"question": "a", "answer": "1", "metadata": "not json"}\n',
         r"meta.jsonl, row 1 \(line 1\): column 'metadata' is not a JSON object"),
        ("empty.csv", "", r"empty.csv: empty; a CSV file starts with a header row"),
        ("notes.txt", "hello", r"notes.txt: unknown format '.txt'; expected one of \['.csv', '.json', '.jsonl'"),
    ],
)
def test_bad_files_are_named_with_row_and_column(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataFileError, match=message):
        read_rows(path, labelled=True)


def test_a_missing_file_and_a_folder_that_is_no_dataset_are_refused(tmp_path):
    with pytest.raises(DataFileError, match="no such file or folder"):
        read_rows(tmp_path / "absent.jsonl")
    (tmp_path / "folder").mkdir()
    with pytest.raises(DataFileError, match="not a folder saved by `datasets`"):
        read_rows(tmp_path / "folder")
    table = datasets.Dataset.from_list(ROWS)
    datasets.DatasetDict({"a": table, "b": table}).save_to_disk(str(tmp_path / "two"))
    with pytest.raises(DataFileError, match=r"splits \['a', 'b'\]: keep one, or name one 'train'"):
        read_rows(tmp_path / "two")


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_made_files_read_back_as_the_built_in_bank(tmp_path, suffix):
    rows = make_rows("add1", 20, seed=3)
    read = read_rows(write_rows(rows, tmp_path / f"add1{suffix}"), labelled=True)
    assert [(r.question, r.answer, r.domain) for r in read] == [(r["question"], r["answer"], "add1") for r in rows]
    assert read[0].metadata["source_dataset"] == "basic_arithmetic"
    questions = read_rows(write_rows(rows, tmp_path / f"server{suffix}", labelled=False))
    assert [(r.question, r.answer) for r in questions] == [(r["question"], None) for r in rows]


def test_datasets_cli_makes_and_checks_files(tmp_path, capsys):
    main(["datasets", "make", "sub1", "--size", "30", "--out", str(tmp_path / "sub1.jsonl"),
          "--questions-out", str(tmp_path / "sub1-questions.csv")])
    main(["datasets", "check", str(tmp_path / "sub1.jsonl"), "--labelled"])
    out = capsys.readouterr().out
    distinct = len({r["question"] for r in make_rows("sub1", 30)})
    assert f"sub1.jsonl: 30 rows, {distinct} distinct questions ({30 - distinct} repeated), 30 with an answer" in out
    with pytest.raises(SystemExit, match="no answer column 'answer'"):
        main(["datasets", "check", str(tmp_path / "sub1-questions.csv"), "--labelled"])
    with pytest.raises(SystemExit, match="unknown domain 'astrology'"):
        main(["datasets", "make", "astrology", "--size", "3", "--out", str(tmp_path / "x.jsonl")])
    with pytest.raises(SystemExit, match="write .jsonl, .csv or .parquet"):
        main(["datasets", "make", "add1", "--size", "3", "--out", str(tmp_path / "x.txt")])


def test_datasets_make_writes_several_domains_and_a_held_out_set(tmp_path, capsys):
    pool, held = tmp_path / "pool.jsonl", tmp_path / "held.jsonl"
    main(["datasets", "make", "add1,chain3", "--size", "150", "--out", str(pool)])
    main(["datasets", "make", "add1,chain3", "--size", "20", "--seed", "7", "--exclude", str(pool), "--out",
          str(held)])
    main(["datasets", "make", "add1", "--size", "5", "--unlabelled", "--out", str(tmp_path / "server.csv")])
    out = capsys.readouterr().out
    assert f"{pool}: 300 labelled add1,chain3 questions (seed 0)" in out
    assert f"none of the questions of {pool}" in out
    pool_rows, held_rows = read_rows(pool, labelled=True), read_rows(held, labelled=True)
    # the pool is each domain's first 150 items in generation order, repeats kept (add1 has ~121 texts)
    assert [r.question for r in pool_rows] == [r["question"] for d in ("add1", "chain3") for r in make_rows(d, 150)]
    assert len({r.question for r in pool_rows if r.domain == "add1"}) < 150
    # the held-out set: 20 per domain, all new, none repeated; add1's 20 had to be searched for
    assert [sum(r.domain == d for r in held_rows) for d in ("add1", "chain3")] == [20, 20]
    held_texts = [normalise(r.question) for r in held_rows]
    assert len(set(held_texts)) == 40 and not set(held_texts) & {normalise(r.question) for r in pool_rows}
    assert held_texts != [normalise(r["question"]) for d in ("add1", "chain3") for r in make_rows(d, 20, seed=7)]
    assert read_rows(tmp_path / "server.csv")[0].answer is None
    with pytest.raises(SystemExit, match="add1: only .* new questions among the 4000 drawn"):
        main(["datasets", "make", "add1", "--size", "200", "--exclude", str(pool), "--out", str(held)])
