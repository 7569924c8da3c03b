"""Identity-disjoint, deterministic splits; FOMM folders respected; pairs cross identities."""
from __future__ import annotations

from datamodules.layouts import ClipRecord
from datamodules.pairs import generate_pairs, load_pairs, save_pairs
from datamodules.splits import split_records


def recs(n_ids=20, clips=3, hint=None):
    return [ClipRecord(path=f"/d/id{i:03d}/v/c{c}.mp4", identity=f"id{i:03d}", video=f"id{i:03d}/v",
                       clip_id=f"id{i:03d}/v/c{c}", split_hint=hint(i) if hint else None, num_frames=10)
            for i in range(n_ids) for c in range(clips)]


def ids(split):
    return {r.identity for r in split}


def test_identity_disjoint_and_deterministic():
    r = recs()
    a = split_records(r, 0.1, 0.2, split_seed=0)
    assert sum(len(v) for v in a.values()) == len(r)
    assert not (ids(a["train"]) & ids(a["val"])) and not (ids(a["train"]) & ids(a["test"]))
    assert not (ids(a["val"]) & ids(a["test"]))
    assert (len(ids(a["val"])), len(ids(a["test"])), len(ids(a["train"]))) == (2, 4, 14)
    b = split_records(list(reversed(r)), 0.1, 0.2, split_seed=0)  # order of discovery does not matter
    assert {s: ids(v) for s, v in a.items()} == {s: ids(v) for s, v in b.items()}
    c = split_records(r, 0.1, 0.2, split_seed=1)                   # the seed changes the assignment
    assert ids(c["test"]) != ids(a["test"])


def test_tiny_dataset_keeps_each_split_nonempty():
    s = split_records(recs(n_ids=4), 0.1, 0.1, split_seed=0)
    assert all(len(ids(s[k])) == 1 for k in ("val", "test")) and len(ids(s["train"])) == 2


def test_fomm_folders_respected():
    r = recs(n_ids=20, hint=lambda i: "test" if i >= 16 else "train")
    s = split_records(r, 0.25, 0.5, split_seed=3)
    assert ids(s["test"]) == {f"id{i:03d}" for i in range(16, 20)}   # test folder = test, test_fraction unused
    assert len(ids(s["val"])) == 4 and ids(s["val"]) <= {f"id{i:03d}" for i in range(16)}
    assert not (ids(s["val"]) & ids(s["train"]))


def test_pairs_generated_cross_identity_and_roundtrip(tmp_path):
    r = recs(n_ids=5)
    p1, p2 = generate_pairs(r, 12, seed=4), generate_pairs(list(reversed(r)), 12, seed=4)
    assert all(p.source.identity != p.driving.identity for p in p1)
    assert [(p.source.clip_id, p.driving.clip_id) for p in p1] == [(p.source.clip_id, p.driving.clip_id) for p in p2]
    out = save_pairs(p1, tmp_path / "pairs.csv")
    assert out.read_text().splitlines()[0] == "source,driving"
    back = load_pairs(out, r)
    assert [(p.source.path, p.driving.path) for p in back] == [(p.source.path, p.driving.path) for p in p1]


def test_fomm_style_csv_by_file_name(tmp_path):
    r = recs(n_ids=3)
    (tmp_path / "vox.csv").write_text("source,driving\nc0.mp4,c1\n")  # names resolve by file name / stem
    # ambiguous names resolve to the first record; full clip ids are exact
    (tmp_path / "ids.csv").write_text("source,driving\nid001/v/c0,id002/v/c2\n")
    p = load_pairs(tmp_path / "ids.csv", r)[0]
    assert (p.source.identity, p.driving.identity) == ("id001", "id002")
    assert len(load_pairs(tmp_path / "vox.csv", r)) == 1
