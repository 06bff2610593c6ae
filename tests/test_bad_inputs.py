"""The bad-input corpus (issue 11): every command refuses bad input with exit code 2 and one
line naming the flag or file, before any expensive work, with no traceback and nothing
written. The CLI runs in-process (`main(argv)`), one table row per case; `{F}` in an
argument is the directory of fixture inputs, and each case runs in an empty working
directory, so default outputs (emq_runs/, runs/) would be seen too.
"""

from __future__ import annotations

import contextlib
import io
import json
import lzma
import shutil
import sqlite3
import struct
import time
import zlib

import numpy as np
import pytest
import torch

from emq.bench import bench_import
from emq.cli.main import main

B20 = ",".join(["4"] * 20)  # a configuration of the default model (20 slots)
B18 = ",".join(["4"] * 18)  # of resnet18
PROXY = '{{"format": "emq-proxy/1", "orientation": 1, "tree": {tree}{extra}}}'


SCALAR = '{"op": "l2_w", "args": [{"term": "W"}]}'  # a valid tree: the weights' L2 norm


def _proxy(tree: str, extra: str = "") -> str:
    return PROXY.format(tree=tree, extra=extra)


FILES = {
    "deep.json": '{"format": "emq-proxy/1", "orientation": 1, "tree": '
    + '{"op": "abs", "args": [' * 10000
    + '{"term": "W"}'
    + "]}" * 10000
    + "}",
    "bigint.json": _proxy('{"const": 1' + "0" * 400 + "}"),
    "huge.json": _proxy('{"const": 1e308}'),
    "nan.json": _proxy('{"const": NaN}'),
    "unknown_op.json": _proxy('{"op": "frobnicate", "args": [{"term": "W"}]}'),
    "unknown_term.json": _proxy('{"term": "Z"}'),
    "arity.json": _proxy('{"op": "add_s", "args": [{"term": "b"}]}'),
    "name.json": _proxy(SCALAR, ', "name": "../../../x"'),
    "format.json": '{"format": "emq-proxy/9", "orientation": 1, "tree": {"term": "W"}}',
    "orientation.json": _proxy(SCALAR).replace('"orientation": 1', '"orientation": 2'),
    "act0.json": _proxy(SCALAR, ', "act_samples": 0'),
    "act_big.json": _proxy(SCALAR, ', "act_samples": 10000000'),
    "list.json": "[1, 2]",
    "notjson.json": "{ this is not json",
    "nodes.json": _proxy("[" + ",".join(['{"term": "W"}'] * 3) + "]"),
    "text.txt": "hello\n",
    "garbage.txt": "not a configuration\n",
    "bitmap_bad.json": '{"format": "emq-bitmap/1", "bits": {"nosuch.layer": 4}}',
    "afile": "x",
}


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("bad-inputs")
    for name, text in FILES.items():
        (root / name).write_text(text)
    rng = np.random.default_rng(0)
    for folder, classes in (("rgb", ["a", "b"]), ("one", ["a"])):
        for c in classes:
            d = root / folder / c
            d.mkdir(parents=True)
            for i in range(4):
                Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(d / f"{i}.png")
    (root / "emptydir").mkdir()
    (root / "empty.sqlite").write_bytes(b"")
    with contextlib.closing(sqlite3.connect(root / "foreign.sqlite")) as con:
        con.execute("create table t(x)")
        con.commit()
    run = root / "run"
    run.mkdir()
    (run / "checkpoint.npz").write_bytes(b"PK\x03\x04 truncated")
    torch.save({"x": torch.zeros(3)}, root / "wrong.pt")
    torch.save(
        {"fc.weight": torch.zeros(7, 512)}, root / "r18_7classes.pt"
    )  # only the classifier: enough to tell the class count
    _issue24_fixtures(root)
    lines = [f"{[int(b) for b in rng.integers(2, 5, 18)]}:{60 + 10 * rng.random():.3f}" for _ in range(8)]
    (root / "r18.txt").write_text("\n".join(lines) + "\n")
    bench_import(root / "r18.txt", "mqbench101-text", root / "r18.sqlite", model="resnet18")
    return root


def _write_idx(path, arr: np.ndarray) -> None:
    """One uncompressed idx file (LeCun's format) of a uint8 array."""
    dims = b"".join(struct.pack(">i", d) for d in arr.shape)
    path.write_bytes(bytes([0, 0, 0x08, arr.ndim]) + dims + arr.astype(np.uint8).tobytes())


# damaged or hostile copies of a small bench (40 records of the shipped default bench): SQL run on the copy
BENCH_DAMAGE = {
    "meta_notjson": "UPDATE meta SET value = '{not json' WHERE key = 'model'",
    "cfg_bad": "UPDATE records SET config = '9,x,3' WHERE idx = 5",
    "top1_bad": "UPDATE records SET top1 = 'abc' WHERE idx = 5",
    "model_unknown": "UPDATE meta SET value = '\"nosuchnet\"' WHERE key = 'model'",
    "trigger": "CREATE TRIGGER t AFTER INSERT ON meta BEGIN DELETE FROM records; END",
    "view": "CREATE VIEW v AS SELECT 1",
    "extra_table": "CREATE TABLE extra (x)",
    "big_blob": "UPDATE records SET outcomes = zeroblob(2000000) WHERE idx = 5",
}


def _issue24_fixtures(root) -> None:
    """Inputs of issue 24's faults: a non-UTF-8 proxy file, a bit map with wrong slot names, a
    configurations file with a short line, idx data with no test images or out-of-range labels,
    and damaged or hostile bench files."""
    from emq.allocation.bitmap import bitmap_json
    from emq.bench.bundles import BUNDLES
    from emq.target import resolve_target

    (root / "nonutf8.json").write_bytes(_proxy('{"term": "W"}').encode().replace(b'"W"', b'"W\xff\xfe"'))
    (root / "ok.json").write_text(_proxy(SCALAR))
    doc = bitmap_json(resolve_target("default", need_data=False).layer_map, [4] * 20)
    doc["slot_names"] = [f"s{i}" for i in range(20)]
    (root / "bitmap_names.json").write_text(json.dumps(doc))
    (root / "short.txt").write_text("# extra configurations\n" + B20 + "\n4,4,4\n")
    rng = np.random.default_rng(0)
    for name, n_test, label in (("idx_empty", 0, None), ("idx_labels", 8, 200)):
        d = root / name
        d.mkdir()
        train_y, test_y = np.arange(16) % 10, np.arange(n_test) % 10
        if label is not None:
            test_y[3] = label
        _write_idx(d / "train-images-idx3-ubyte", rng.integers(0, 255, (16, 28, 28)))
        _write_idx(d / "train-labels-idx1-ubyte", train_y)
        _write_idx(d / "t10k-images-idx3-ubyte", rng.integers(0, 255, (n_test, 28, 28)))
        _write_idx(d / "t10k-labels-idx1-ubyte", test_y)
    small = root / "small.sqlite"
    with (
        contextlib.closing(sqlite3.connect(BUNDLES["default"].path)) as src,
        contextlib.closing(sqlite3.connect(small)) as dst,
    ):
        src.backup(dst)
        dst.execute("DELETE FROM records WHERE idx >= 40")
        dst.execute("DELETE FROM plan WHERE idx >= 40")
        dst.execute("DELETE FROM repeats WHERE config NOT IN (SELECT config FROM records)")
        dst.commit()
        dst.execute("VACUUM")
    for name, sql in BENCH_DAMAGE.items():
        shutil.copy(small, root / f"{name}.sqlite")
        with contextlib.closing(sqlite3.connect(root / f"{name}.sqlite")) as con:
            con.executescript(sql)
            con.commit()
    # a zlib bomb small enough to pass the size bound: 10 MB of zeros for a bench of ~3,000 test images
    shutil.copy(small, root / "bomb.sqlite")
    with contextlib.closing(sqlite3.connect(root / "bomb.sqlite")) as con:
        n = len(json.loads(con.execute("SELECT value FROM meta WHERE key = 'test_pools'").fetchone()[0])["sources"])
        blob = struct.pack("<BI", 1, n) + zlib.compress(bytes(10_000_000), 9)
        con.execute("UPDATE records SET outcomes = ? WHERE idx = 5", (blob,))
        con.commit()
    # the same as an LZMA2 bomb (format 2, what emq writes now)
    shutil.copy(small, root / "lzma_bomb.sqlite")
    with contextlib.closing(sqlite3.connect(root / "lzma_bomb.sqlite")) as con:
        filters = [{"id": lzma.FILTER_LZMA2, "preset": 6}]
        blob = struct.pack("<BI", 2, n) + lzma.compress(bytes(10_000_000), format=lzma.FORMAT_RAW, filters=filters)
        con.execute("UPDATE records SET outcomes = ? WHERE idx = 5", (blob,))
        con.commit()


def _listing(root) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


CASES = [
    # weight rounding methods and MNIST-format data (bench suite)
    (["quantize", "--bits", B20, "--weight-quantizer", "nonesuch"], "unknown weight quantizer; use one of mse"),
    (
        ["quantize", "--bits", B20, "--weight-quantizer", "adaround", "--quantizer-option", "itres=5"],
        "has no option 'itres'",
    ),
    (["quantize", "--bits", B20, "--weight-quantizer", "adaround", "--quantizer-option", "iters"], "use KEY=VALUE"),
    (["quantize", "--bits", B20, "--weight-quantizer", "gptq", "--quantizer-option", "damp=lots"], "must be a float"),
    (
        ["quantize", "--bits", B20, "--weight-quantizer", "gptq", "--quantizer-option", "damp=-1"],
        "must not be negative",
    ),
    (
        ["quantize", "--model", "resnet20-fashion", "--bits", B20, "--data", "fashion-mnist:{F}"],
        "no MNIST-format idx files",
    ),
    (["bench", "list", "--frobnicate"], "unrecognized arguments"),
    # transfer
    (["transfer", "--benches", "default", "--out", "t"], "needs at least two benches"),
    (["transfer", "--benches", "default,default", "--out", "t"], "a bench is named twice"),
    (["transfer", "--benches", "default,{F}/missing.sqlite", "--out", "t"], "missing.sqlite"),
    (
        ["transfer", "--benches", "default,stratified", "--out", "t", "--protocols", "leave-one-out"],
        "at least two networks",
    ),
    (["transfer", "--benches", "default,vgg-digits", "--out", "t", "--protocols", "sideways"], "unknown sideways"),
    (["transfer", "--benches", "default,vgg-digits", "--out", "t", "--seeds", "a,b"], "comma-separated integers"),
    (
        ["transfer", "--benches", "default,vgg-digits", "--out", "t", "--whole-config", "hawq-v2"],
        "not a whole-configuration proxy",
    ),
    (["transfer", "--benches", "default,vgg-digits", "--out", "t", "--generations", "0"], "--generations 0"),
    (["transfer", "--benches", "default,vgg-digits"], "required: --out"),
    # top level
    ([], "required: COMMAND"),
    (["nosuch"], "invalid choice"),
    (["layers", "--frobnicate"], "unrecognized arguments"),
    # layers
    (["layers", "--model", "resnet1800"], "unknown model"),
    (["layers", "--model", ""], "unknown model"),
    (["layers", "--input-size=-3"], "--input-size -3: must be an integer >= 1"),
    (["layers", "--input-size", "0"], "--input-size 0: must be an integer >= 1"),
    (["layers", "--input-size", "abc"], "invalid int value"),
    (["layers", "--num-classes", "5"], "the embedded model default has 10 classes"),
    (["layers", "--model", "resnet18", "--num-classes", "0"], "--num-classes 0: a classifier needs"),
    (["layers", "--model", "resnet18", "--num-classes", "-1"], "--num-classes -1: a classifier needs"),
    (["layers", "--weights", "{F}/missing.pt"], "--weights {F}/missing.pt: no such file"),
    (["layers", "--weights", "{F}/wrong.pt"], "--weights {F}/wrong.pt: does not fit the model"),
    (["layers", "--weights", "{F}/text.txt"], "not a readable torch checkpoint"),
    (["layers", "--weights", "{F}/emptydir"], "--weights {F}/emptydir"),
    (["layers", "--model", "resnet18", "--weights", "{F}/r18_7classes.pt"], "trained for 7 classes"),
    (["layers", "--bits-allowed", "9"], "outside 1..8"),
    # quantize
    (["quantize", "--bits", "4,4"], "20 slots"),
    (["quantize", "--bits", ",".join(["9"] * 20)], "outside 1..8"),
    (["quantize", "--bits", ",".join(["0"] * 20)], "outside 1..8"),
    (["quantize", "--bits", "a,b"], "comma-separated integers"),
    (["quantize"], "--bits"),
    (["quantize", "--bits", B20, "--bitmap", "{F}/bitmap_bad.json"], "not both"),
    (["quantize", "--bitmap", "{F}/missing.json"], "{F}/missing.json"),
    (["quantize", "--bitmap", "{F}/notjson.json"], "{F}/notjson.json"),
    (["quantize", "--bitmap", "{F}/bitmap_bad.json"], "{F}/bitmap_bad.json"),
    (["quantize", "--model", "resnet18", "--bits", B18], "--data"),
    (["quantize", "--data", "/nonexistent/dir", "--bits", B20], "no such directory"),
    (["quantize", "--data", "{F}/afile", "--bits", B20], "no such directory"),
    (["quantize", "--data", "{F}/emptydir", "--bits", B20], "not a readable ImageFolder"),
    (
        ["quantize", "--data", "{F}/rgb", "--bits", B20],
        "holds 3-channel images, but model default takes 1-channel input",
    ),
    (["quantize", "--model", "resnet18", "--data", "{F}/one", "--bits", B18], "has 1 class folder"),
    (["quantize", "--bits", B20, "--calib-size", "0"], "--calib-size 0: must be an integer >= 1"),
    (["quantize", "--bits", B20, "--calib-size", "-5"], "--calib-size -5"),
    (["quantize", "--bits", B20, "--act-bits", "40"], "--act-bits 40"),
    (["quantize", "--bits", B20, "--act-bits", "0"], "--act-bits 0"),
    (["quantize", "--bits", B20, "--bn", "bogus"], "invalid choice"),
    (["quantize", "--bits", B20, "--weights", "{F}/wrong.pt"], "does not fit the model"),
    # stats (refused before any statistics are computed)
    (["stats", "--calib-size", "0"], "calib_size=0"),
    (["stats", "--batch-size", "0"], "batch_size=0"),
    (["stats", "--hessian-images", "0"], "hessian_images=0"),
    (["stats", "--hessian-samples", "2", "--hessian-min-samples", "5"], "exceeds"),
    (["stats", "--hessian-tol", "-1"], "must not be negative"),
    (["stats", "--eig-iters", "-1"], "must not be negative"),
    (["stats", "--act-cap", "0"], "act_cap=0"),
    (["stats", "--bits-allowed", "9"], "outside 1..8"),
    (["stats", "--negative-trace", "bogus"], "invalid choice"),
    (["stats", "--out", "{F}/emptydir"], "--out {F}/emptydir: is a directory"),
    (["stats", "--out", "{F}/afile/stats.pt"], "--out {F}/afile: is a file"),
    (["stats", "--cache-dir", "{F}/afile"], "--cache-dir {F}/afile: is a file"),
    (["stats", "--data", "{F}/rgb"], "holds 3-channel images"),
    # search
    (["search", "--generations", "-1", "--out", "s"], "--generations -1"),
    (["search", "--population", "2", "--out", "s"], "--population 2"),
    (["search", "--max-evaluations", "0", "--out", "s"], "--max-evaluations 0"),
    (["search", "--checkpoint-every", "0", "--out", "s"], "--checkpoint-every 0"),
    (["search", "--top", "0", "--out", "s"], "--top 0"),
    (["search", "--workers", "0", "--out", "s"], "--workers 0"),
    (["search", "--space", "bogus"], "invalid choice"),
    (["search", "--metric", "bogus"], "invalid choice"),
    (["search", "--terminals", "nosuch", "--out", "s"], "nosuch"),
    (["search", "--exclude-terminals", "nosuch", "--out", "s"], "nosuch"),
    (["search", "--include-ops", "nosuch", "--out", "s"], "nosuch"),
    (["search", "--exclude-ops", "nosuch", "--out", "s"], "nosuch"),
    (["search", "--bench", "{F}/missing.sqlite", "--out", "s"], "{F}/missing.sqlite"),
    (["search", "--bench", "{F}/empty.sqlite", "--out", "s"], "--bench {F}/empty.sqlite: not a bench file"),
    (["search", "--bench", "{F}/foreign.sqlite", "--out", "s"], "--bench {F}/foreign.sqlite: not a bench file"),
    (["search", "--bench", "{F}/r18.sqlite", "--out", "s"], "heldout split has"),
    (["search", "--bench", "{F}/r18.sqlite", "--model", "default", "--out", "s"], "was built for model resnet18"),
    (["search", "--out", "{F}/afile"], "--out {F}/afile: is a file"),
    (["search", "--resume", "--out", "s"], "no checkpoint in s"),
    (["search", "--resume", "--out", "{F}/run"], "checkpoint {F}/run/checkpoint.npz: unreadable"),
    (["search", "--out", "{F}/run"], "already holds a campaign"),
    (["search", "--data", "{F}/rgb", "--out", "s"], "holds 3-channel images"),
    (["search", "--aggregate", "nonsense", "--out", "s"], "argument --aggregate: invalid choice: 'nonsense'"),
    (["search", "--aggregate-k", "-1", "--out", "s"], "--aggregate-k -1"),
    (["search", "--parsimony", "-1", "--out", "s"], "--parsimony -1"),
    (
        ["search", "--bench", "default", "--bench", "vgg-digits", "--data", "default", "--out", "s"],
        "--data default: with several --bench",
    ),
    (
        ["search", "--bench", "default", "--bench", "{F}/empty.sqlite", "--out", "s"],
        "--bench {F}/empty.sqlite: not a bench file",
    ),
    # score
    (["score", "--bench", "{F}/missing.sqlite"], "{F}/missing.sqlite"),
    (["score", "--bench", "{F}/empty.sqlite"], "--bench {F}/empty.sqlite: not a bench file"),
    (["score", "--proxies", "nosuch"], "nosuch"),
    (["score", "--proxy", "{F}/missing.json"], "{F}/missing.json: cannot be read"),
    (["score", "--proxy", "{F}/deep.json"], "nested 20002 levels deep"),
    (["score", "--proxy", "{F}/bigint.json"], "has 401 digits"),
    (["score", "--proxy", "{F}/huge.json"], "magnitude at most"),
    (["score", "--metric", "bogus"], "invalid choice"),
    (["score", "--limit", "-1"], "--limit -1"),
    (["score", "--workers", "0"], "--workers 0"),
    (["score", "--ompq-beta", "nan"], "--ompq-beta nan"),
    (["score", "--out", "{F}/afile"], "--out {F}/afile: is a file"),
    (["score", "--data", "{F}/rgb", "--proxies", "bitsum"], "holds 3-channel images"),
    (
        ["score", "--bench", "{F}/r18.sqlite", "--data", "default", "--proxies", "bitsum"],
        "holds 1-channel images, but model resnet18 takes 3-channel",
    ),
    (["score", "--weights", "{F}/wrong.pt", "--proxies", "bitsum"], "{F}/wrong.pt"),
    # export (proxy files are parsed structurally and bounded)
    (["export", "{F}/missing.json", "--out", "o"], "cannot be read"),
    (["export", "{F}/notjson.json", "--out", "o"], "not valid JSON"),
    (["export", "{F}/deep.json", "--out", "o"], "nested 20002 levels deep"),
    (["export", "{F}/bigint.json", "--out", "o"], "has 401 digits"),
    (["export", "{F}/huge.json", "--out", "o"], "magnitude at most"),
    (["export", "{F}/nan.json", "--out", "o"], "NaN is not a number"),
    (["export", "{F}/unknown_op.json", "--out", "o"], "unknown primitive 'frobnicate'"),
    (["export", "{F}/unknown_term.json", "--out", "o"], "unknown terminal 'Z'"),
    (["export", "{F}/arity.json", "--out", "o"], "argument(s), got 1"),
    (["export", "{F}/name.json", "--out", "o"], "field 'name'"),
    (["export", "{F}/format.json", "--out", "o"], "field 'format'"),
    (["export", "{F}/orientation.json", "--out", "o"], "field 'orientation'"),
    (["export", "{F}/act0.json", "--out", "o"], "field 'act_samples'"),
    (["export", "{F}/act_big.json", "--out", "o"], "field 'act_samples'"),
    (["export", "{F}/list.json", "--out", "o"], "top level must be a JSON object"),
    (["export", "{F}/nodes.json", "--out", "o"], "must be an object"),
    (["export", "{F}/text.txt", "--out", "o"], "not valid JSON"),
    (["export", "{F}/huge.json", "--to", "bogus"], "invalid choice"),
    (["export", "{F}/act0.json", "--out", "{F}/afile"], "--out {F}/afile: is a file"),
    # allocate
    (["allocate", "--proxy", "bitsum"], "give at least one budget"),
    (["allocate", "--proxy", "bitsum", "--budget-avg-bits", "abc"], "--budget-avg-bits"),
    (["allocate", "--proxy", "bitsum", "--budget-size", "xyz"], "--budget-size"),
    (["allocate", "--proxy", "bitsum", "--budget-size", "10KB"], "smallest feasible value"),
    (["allocate", "--proxy", "nosuch", "--budget-avg-bits", "3"], "unknown proxy 'nosuch'"),
    (["allocate", "--proxy", "{F}/deep.json", "--budget-avg-bits", "3"], "nested 20002 levels deep"),
    (["allocate", "--proxy", "{F}/huge.json", "--budget-avg-bits", "3"], "magnitude at most"),
    (["allocate", "--proxy", "bitsum", "--budget-avg-bits", "3", "--pin", "conv9=4"], "conv9"),
    (["allocate", "--proxy", "bitsum", "--budget-avg-bits", "3", "--pin", "conv1=x"], "integer"),
    (["allocate", "--proxy", "bitsum", "--budget-avg-bits", "3", "--pin", "conv1"], "use SLOT=VALUE"),
    (
        ["allocate", "--proxy", "hawq-v2", "--budget-avg-bits", "3", "--pin", "conv1=8"],
        "8 bits is outside --bits-allowed 2,3,4",
    ),
    (["allocate", "--proxy", "bitsum", "--budget-avg-bits", "3", "--slot-bits", "fc=9"], "outside 1..8"),
    (["allocate", "--proxy", "bitsum", "--budget-avg-bits", "3", "--tie", "conv1,nosuch"], "nosuch"),
    (["allocate", "--proxy", "bitsum", "--budget-avg-bits", "3", "--bits-allowed", "0,9"], "outside 1..8"),
    (["allocate", "--proxy", "bitsum", "--budget-avg-bits", "3", "--search-evals", "0"], "--search-evals 0"),
    (["allocate", "--proxy", "bitsum", "--sweep", "2:4:3"], "give --out DIR"),
    (["allocate", "--proxy", "bitsum", "--sweep", "a:b:c", "--out", "o"], "--sweep"),
    (["allocate", "--proxy", "bitsum", "--budget-avg-bits", "3", "--baseline", "size"], "add --sweep"),
    (["allocate", "--proxy", "bitsum", "--budget-avg-bits", "3", "--out", "{F}/afile"], "--out {F}/afile: is a file"),
    (
        ["allocate", "--proxy", "bitsum", "--budget-avg-bits", "3", "--model", "resnet18"],
        "--model resnet18 has no data: pass --data",
    ),
    (
        ["allocate", "--proxy", "bitsum", "--budget-avg-bits", "3", "--bench", "{F}/empty.sqlite"],
        "--bench {F}/empty.sqlite: not a bench file",
    ),
    (["allocate", "--proxy", "bitsum", "--budget-avg-bits", "3", "--sweep-kind", "bogus"], "invalid choice"),
    (["allocate", "--proxy", "bitsum", "--budget-avg-bits", "3", "--data", "{F}/rgb"], "holds 3-channel images"),
    # bench
    (["bench", "build", "--configs", "0", "--out", "b.sqlite"], "--configs 0: a bench needs at least 6 configurations"),
    (["bench", "build", "--configs", "5", "--out", "b.sqlite"], "--configs 5"),
    (
        ["bench", "build", "--noise-samples", "2", "--out", "b.sqlite"],
        "--noise-samples 2: use 0 (no calibration retest) or at least 4",
    ),
    (["bench", "build", "--noise-samples", "-1", "--out", "b.sqlite"], "--noise-samples -1"),
    (["bench", "build", "--workers", "0", "--out", "b.sqlite"], "--workers 0"),
    (["bench", "build", "--test-limit", "0", "--out", "b.sqlite"], "--test-limit 0"),
    (["bench", "build", "--bits-allowed", "9", "--out", "b.sqlite"], "outside 1..8"),
    (["bench", "build", "--pin", "0=x", "--out", "b.sqlite"], "--pin '0=x'"),
    (["bench", "build", "--configs-file", "{F}/missing.txt", "--out", "b.sqlite"], "--configs-file {F}/missing.txt"),
    (["bench", "build", "--sampler", "bogus", "--out", "b.sqlite"], "invalid choice"),
    (["bench", "build", "--calib-size", "0", "--out", "b.sqlite"], "--calib-size 0"),
    (["bench", "build", "--data", "{F}/rgb", "--out", "b.sqlite"], "holds 3-channel images"),
    (["bench", "build", "--out", "{F}/r18.sqlite"], "{F}/r18.sqlite"),
    (["bench", "build"], "--out"),
    (["bench", "info", "{F}/missing.sqlite"], "{F}/missing.sqlite"),
    (["bench", "info", "{F}/empty.sqlite"], "bench {F}/empty.sqlite: not a bench file"),
    (["bench", "info", "{F}/foreign.sqlite"], "bench {F}/foreign.sqlite: not a bench file"),
    (["bench", "import", "{F}/missing.txt", "--format", "mqbench101-text", "--out", "b.sqlite"], "{F}/missing.txt"),
    (["bench", "import", "{F}/garbage.txt", "--format", "mqbench101-text", "--out", "b.sqlite"], "{F}/garbage.txt"),
    (["bench", "import", "{F}/r18.txt", "--format", "bogus", "--out", "b.sqlite"], "invalid choice"),
    (
        ["bench", "export", "{F}/empty.sqlite", "--to", "csv", "--out", "x.csv"],
        "bench {F}/empty.sqlite: not a bench file",
    ),
    (["bench", "export", "default", "--to", "xml"], "invalid choice"),
    # demo (all refused before the statistics)
    (["demo", "--out", "{F}/afile"], "--out {F}/afile: is a file"),
    (["demo", "--out", "{F}/afile/sub"], "which is a file"),
    (["demo", "--out", "d", "--bench", "{F}/missing.sqlite"], "{F}/missing.sqlite"),
    (["demo", "--out", "d", "--bench", "{F}/r18.sqlite"], "was built for model resnet18"),
    (["demo", "--out", "d", "--population", "2"], "--population 2"),
    (["demo", "--out", "d", "--generations", "-1"], "--generations -1"),
    (["demo", "--out", "d", "--budget-avg-bits", "1"], "--budget-avg-bits 1: use values from 2 to 4"),
    (["demo", "--out", "d", "--budget-avg-bits", "2.5,5"], "--budget-avg-bits 2.5,5: use values from 2 to 4"),
    (["demo", "--out", "d", "--budget-avg-bits", "abc"], "--budget-avg-bits abc: give comma-separated numbers"),
    (["demo", "--out", "d", "--budget-avg-bits", ","], "--budget-avg-bits ,: use values from 2 to 4"),
    # issue 24: tracebacks
    (["score", "--proxy", "{F}/nonutf8.json", "--proxies", "bitsum"], "proxy file {F}/nonutf8.json: not UTF-8 text"),
    (["export", "{F}/nonutf8.json", "--out", "o"], "proxy file {F}/nonutf8.json: not UTF-8 text"),
    (["allocate", "--proxy", "{F}/nonutf8.json", "--budget-avg-bits", "3"], "{F}/nonutf8.json: not UTF-8 text"),
    (["score", "--bench", "{F}/meta_notjson.sqlite", "--proxies", "bitsum"], "metadata 'model' is not JSON"),
    (["bench", "info", "{F}/meta_notjson.sqlite"], "metadata 'model' is not JSON"),
    (["score", "--bench", "{F}/cfg_bad.sqlite", "--proxies", "bitsum"], "record 5 has configuration '9,x,3'"),
    (["bench", "info", "{F}/cfg_bad.sqlite"], "bench {F}/cfg_bad.sqlite: record 5 has configuration '9,x,3'"),
    (["score", "--bench", "{F}/top1_bad.sqlite", "--proxies", "bitsum"], "record 5 has top1 'abc', not a number"),
    (["bench", "info", "{F}/top1_bad.sqlite"], "bench {F}/top1_bad.sqlite: record 5 has top1 'abc'"),
    (
        ["quantize", "--model", "resnet20-fashion", "--bits", B20, "--data", "fashion-mnist:{F}/idx_empty"],
        "t10k-images-idx3-ubyte: holds no images",
    ),
    (
        ["quantize", "--model", "resnet20-fashion", "--bits", B20, "--data", "fashion-mnist:{F}/idx_labels"],
        "t10k-labels-idx1-ubyte: label 200 at position 3",
    ),
    (["export", "{F}/ok.json", "--out", "/proc/emq-test-out"], "--out /proc/emq-test-out: cannot create"),
    (["export", "{F}/ok.json", "--out", "a" * 300 + "/x"], "is 300 bytes long"),
    (["export", "{F}/ok.json", "--out", "/".join(["abc"] * 1250)], "bytes long, and this system allows"),
    # issue 24: accepted nonsense
    (["search", "--bench", "default", "--bench", "default", "--out", "s"], "--bench default: a bench is named twice"),
    (["search", "--crowding", "2", "--out", "s"], "--crowding 2.0: a correlation threshold must be in (0, 1]"),
    (["stats", "--hessian-tol", "nan"], "--hessian-tol nan: must not be negative or NaN"),
    (["stats", "--eig-tol", "nan"], "--eig-tol nan: must not be negative or NaN"),
    (["bench", "info", "{F}/big_blob.sqlite"], "take 2,000,000 bytes, more than"),
    (["bench", "info", "{F}/bomb.sqlite"], "per-image outcomes have format 1"),
    (["bench", "info", "{F}/lzma_bomb.sqlite"], "per-image outcomes have format 2"),
    (["quantize", "--bitmap", "{F}/bitmap_names.json"], "bit map {F}/bitmap_names.json: field 'slot_names'"),
    # issue 24: hostile bench files (schema objects emq never creates)
    (["bench", "build", "--resume", "--out", "{F}/trigger.sqlite"], "holds the trigger 't', which emq never creates"),
    (["bench", "info", "{F}/view.sqlite"], "holds the view 'v'"),
    (
        ["score", "--bench", "{F}/extra_table.sqlite"],
        "--bench {F}/extra_table.sqlite: not a bench file: it holds the table",
    ),
    # issue 24: unhelpful messages
    (["quantize", "--bits", "-1," + ",".join(["4"] * 19)], "--bits -1: bit-width -1 is outside 1..8"),
    (["allocate", "--proxy", "bitsum", "--budget-size", "-5KB"], "--budget-size -5KB: must be positive"),
    (
        ["allocate", "--proxy", "bitsum", "--budget-avg-bits", "3", "--pin", "conv1=-3"],
        "--pin conv1=-3: -3 is outside 1..8",
    ),
    (
        ["quantize", "--bits", B20, "--weight-quantizer", "adaround", "--quantizer-option", "iters=abc"],
        "--quantizer-option iters=abc: must be an integer",
    ),
    (
        ["bench", "build", "--configs-file", "{F}/short.txt", "--out", "b.sqlite"],
        "--configs-file {F}/short.txt, line 3:",
    ),
    (["stats", "--hessian-samples", "0"], "--hessian-samples 0: use 1 or more"),
    (
        ["allocate", "--bench", "vgg-digits", "--model", "default", "--proxy", "bitsum", "--budget-avg-bits", "3"],
        "--model default: this bench is vgg-digits",
    ),
    (
        ["score", "--bench", "{F}/model_unknown.sqlite", "--proxies", "bitsum"],
        "bench {F}/model_unknown.sqlite: was built for model 'nosuchnet'",
    ),
    (
        ["allocate", "--bench", "{F}/model_unknown.sqlite", "--proxy", "bitsum", "--budget-avg-bits", "3"],
        "bench {F}/model_unknown.sqlite: was built for model 'nosuchnet'",
    ),
    (
        ["layers", "--weights", "{F}/text.txt"],
        "--weights {F}/text.txt: not a readable torch checkpoint: the file holds text",
    ),
    # issue 24: wasted work (a cache that cannot be written is refused before the statistics)
    (["stats", "--cache-dir", "/proc/emq-test-cache"], "--cache-dir /proc/emq-test-cache: cannot write statistics"),
]


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse's own errors
            code = e.code
        except Exception:  # a traceback: reported by the assertions below, not raised
            import traceback

            traceback.print_exc(file=err)
            code = "traceback"
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("argv, message", CASES, ids=[" ".join(a)[:60] for a, _ in CASES])
def test_bad_input_is_refused_cleanly(argv, message, fixtures, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = _listing(fixtures)
    t0 = time.perf_counter()
    code, out, err = run_cli([a.replace("{F}", str(fixtures)) for a in argv])
    seconds = time.perf_counter() - t0
    assert "Traceback" not in err, err
    assert code == 2, (code, out, err)
    assert message.replace("{F}", str(fixtures)) in err, err
    assert out == ""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines[-1].startswith(("emq", "usage:")) and len(lines[-1]) < 600
    assert list(tmp_path.iterdir()) == [], "a refused command left files behind"
    assert _listing(fixtures) == before, "a refused command wrote next to its inputs"
    assert seconds < 30, f"refused only after {seconds:.0f} s: check before the expensive work"


def test_corpus_is_broad():
    commands = {a[0] if a[0] != "bench" else " ".join(a[:2]) for a, _ in CASES if a}
    assert commands >= {
        "layers",
        "quantize",
        "stats",
        "search",
        "score",
        "export",
        "allocate",
        "demo",
        "bench build",
        "bench info",
        "bench import",
        "bench export",
    }
    assert len(CASES) >= 100


def test_help_and_version_import_no_torch():
    """`emq --help` / `--version` read the command table only (issue 11, item 16)."""
    import subprocess
    import sys

    code = (
        "import sys, contextlib, io\nfrom emq.cli.main import main\nfor argv in (['--version'], ['--help']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "        try: main(argv)\n        except SystemExit: pass\n"
        "    assert 'emq' in out.getvalue()\nprint(sorted(m for m in ('torch', 'numpy', 'scipy') if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]", proc.stdout + proc.stderr


def test_hostile_bench_is_refused_before_any_write(fixtures, tmp_path, monkeypatch):
    """A bench holding a trigger is refused on opening, so the trigger never runs and the file is
    unchanged, byte for byte (issue 24)."""
    monkeypatch.chdir(tmp_path)
    bench = fixtures / "trigger.sqlite"
    before = bench.read_bytes()
    # the arguments the shipped default bench was built with, so that a resume would go ahead and write
    code, out, err = run_cli(["bench", "build", "--resume", "--out", str(bench), "--sampler", "uniform"])
    assert code == 2 and "trigger 't'" in err, err
    assert bench.read_bytes() == before
    with contextlib.closing(sqlite3.connect(f"file:{bench}?mode=ro", uri=True)) as con:
        assert con.execute("SELECT count(*) FROM records").fetchone()[0] == 40


def test_a_benchs_unknown_model_is_not_blamed_on_a_flag(fixtures, tmp_path, monkeypatch):
    """No --model was given, so the message must not name one (issue 24)."""
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(["score", "--bench", str(fixtures / "model_unknown.sqlite"), "--proxies", "bitsum"])
    assert code == 2 and "nosuchnet" in err and "--model" not in err, err


def test_export_into_an_immutable_directory(fixtures, tmp_path, monkeypatch):
    """`emq export --out` under a directory nobody may write to, root included (chattr +i):
    one line naming --out, nothing written (issue 24)."""
    import subprocess

    monkeypatch.chdir(tmp_path)
    locked = tmp_path / "locked"
    locked.mkdir()
    if subprocess.run(["chattr", "+i", str(locked)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available on this file system")
    try:
        code, out, err = run_cli(["export", str(fixtures / "ok.json"), "--out", str(locked / "sub")])
        code2, _, err2 = run_cli(["export", str(fixtures / "ok.json"), "--out", str(locked)])
        assert list(locked.iterdir()) == []
    finally:
        subprocess.run(["chattr", "-i", str(locked)], check=True)
    assert code == 2 and f"--out {locked / 'sub'}: cannot create this directory" in err, err
    assert "Traceback" not in err2 and code2 == 2 and "cannot write" in err2, err2


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (from /proc), children first."""
    import os

    parent = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    parent[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out += kids
        todo += kids
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _emq(argv: list[str], cwd, **kw):
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONUNBUFFERED": "1", **kw.pop("env", {})}
    return subprocess.Popen(
        [sys.executable, "-m", "emq.cli.main", *argv],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


@pytest.mark.parametrize("address", ["999.1.1.1:1", "127.0.0.1:1"])
@pytest.mark.parametrize("command", ["search", "bench build"])
def test_unreachable_ray_address_fails_at_once(address, command, tmp_path):
    """Ray retries an address nobody answers at for many minutes, deaf to SIGTERM; emq probes it
    first (issue 24: within 30 s, the interpreter's start included; the probe itself gives up
    after emq.executors.ray_cluster.PROBE_SECONDS). No Ray
    session is created (RAY_TMPDIR stays empty), nothing is written."""
    pytest.importorskip("ray")
    ray_tmp = tmp_path / "ray"
    ray_tmp.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    out = ["--out", "s"] if command == "search" else ["--out", "b.sqlite"]
    proc = _emq(
        [*command.split(), "--executor", "ray", "--ray-address", address, *out], work, env={"RAY_TMPDIR": str(ray_tmp)}
    )
    err = _finish(proc)
    assert proc.returncode == 2, err
    assert f"--ray-address {address}: no Ray cluster answers there" in err
    assert "Traceback" not in err
    assert list(work.iterdir()) == [] and list(ray_tmp.iterdir()) == []


def test_a_ray_address_where_something_else_listens_fails_at_once(tmp_path):
    """An open port that is not a Ray head (here a web server) used to hang `ray.init` for minutes:
    emq's probe asks the port for gRPC's HTTP/2 answer first (issue 24)."""
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    pytest.importorskip("ray")
    server = ThreadingHTTPServer(("127.0.0.1", 0), SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    address = f"127.0.0.1:{server.server_address[1]}"
    work = tmp_path / "work"
    work.mkdir()
    proc = _emq(["search", "--executor", "ray", "--ray-address", address, "--out", "s"], work)
    try:
        err = _finish(proc)
    finally:
        server.shutdown()
    assert proc.returncode == 2, err
    assert f"--ray-address {address}: something listens there but it is not a Ray head" in err
    assert "Traceback" not in err and list(work.iterdir()) == []


def _finish(proc, timeout: float = 30) -> str:
    """The process's stderr once it ends (within `timeout` s); it and everything it started are killed."""
    try:
        return proc.communicate(timeout=timeout)[1]
    finally:
        for p in _descendants(proc.pid):
            _kill(p)
        proc.kill()


def _kill(pid: int) -> None:
    import os
    import signal

    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGKILL)


def _wait_for(predicate, seconds: float) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.5)
    return predicate()


def test_a_sigterm_that_a_library_turns_into_a_plain_interrupt_still_exits_143(monkeypatch, capsys):
    """Ray's blocking calls can catch the Terminated the SIGTERM handler raises and raise a plain
    KeyboardInterrupt instead; the command still reports SIGTERM (143), not Ctrl-C (130)."""
    import os
    import signal

    import emq.cli.cmd_layers as cmd_layers

    def run(args):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises here
        except KeyboardInterrupt:
            raise KeyboardInterrupt from None  # what such a library does

    monkeypatch.setattr(cmd_layers, "run", run)
    assert main(["layers"]) == 128 + signal.SIGTERM
    assert "terminated (SIGTERM)" in capsys.readouterr().err
    monkeypatch.setattr(cmd_layers, "run", lambda args: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert main(["layers"]) == 128 + signal.SIGINT  # a real Ctrl-C afterwards is still one
    assert "interrupted" in capsys.readouterr().err


BUILD = ["bench", "build", "--configs", "8", "--test-limit", "100", "--noise-samples", "0", "--calib-size", "64"]


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["serial", "ray"])
def test_sigterm_stops_a_build_and_everything_it_started(executor, tmp_path):
    """SIGTERM is honoured like Ctrl-C (issue 24): the command says so and exits 143, and what it
    started (a local Ray cluster: GCS, raylet, agents, workers) is stopped, not orphaned."""
    import signal

    if executor == "ray":
        pytest.importorskip("ray")
    extra = ["--executor", "ray", "--workers", "1"] if executor == "ray" else []
    proc = _emq([*BUILD, *extra, "--out", "b.sqlite"], tmp_path)
    started: list[int] = []
    try:
        # the bench file appears once the executor (and its cluster) is up and the build began
        assert _wait_for(lambda: (tmp_path / "b.sqlite").exists() or proc.poll() is not None, 240), "no start"
        assert proc.poll() is None, proc.communicate()
        started = _descendants(proc.pid)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 128 + signal.SIGTERM, err
        assert "terminated (SIGTERM)" in err and "Traceback" not in err, err
        assert _wait_for(lambda: not any(_alive(p) for p in started), 30), [p for p in started if _alive(p)]
    finally:
        for p in started + _descendants(proc.pid):
            _kill(p)
        proc.kill()
