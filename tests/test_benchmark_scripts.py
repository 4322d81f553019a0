"""The 2:4 benchmark programs run end to end on tiny shapes (their figures come from full runs, benchmarks/README.md):
the Python script writes its JSON and the table renderer reads it; the C++ raw-kernel benchmark runs every path this
CPU has."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

import slimformer

ROOT = Path(__file__).resolve().parent.parent


def test_bench_sparse24_script_writes_its_json(tmp_path):
    out = tmp_path / "s.json"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_sparse24.py"), "--shapes", "128x40",
                          "--m", "1", "3", "--layers", "2", "--rounds", "1", "--repeats", "1", "--json", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    d = json.loads(out.read_text())
    assert {(r["dtype"], r["M"]) for r in d["rows"]} == {(t, m) for t in ("bf16", "fp32", "int4-bf16", "int4-fp32")
                                                           for m in (1, 3)}
    assert all(r["sparse_us"] > 0 and r["dense_us"] > 0 for r in d["rows"])
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import results_tables
    results_tables.RESULTS = tmp_path
    text = results_tables.sparse24_speed("s.json")
    assert "| 128x40 | bf16 | 3 |" in text and "| 128x40 | int4-bf16 | 1 |" in text


def test_bench_sparse24_kernel_runs_every_path():
    exe = Path(slimformer.__file__).parent / "bin" / "bench_sparse24_kernel"
    if not exe.exists():
        pytest.skip("built without SLIMFORMER_BUILD_BENCHMARKS")
    isa = slimformer.ops.cpu_features().split()[0].split("=")[1]
    for k in (264, 256):  # the fused 2:4 + int4 kernel needs K % 64 == 0
        run = subprocess.run([str(exe), "--k", str(k), "--n", "37", "--m", "3", "--layers", "2", "--iters", "2",
                              "--json"], capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        paths = {json.loads(line)["path"] for line in run.stdout.splitlines()}
        assert {"scalar-f32", "scalar-bf16v", "scalar-int4-f32"} <= paths
        for level in {"avx512bf16": ["avx512bf16"], "amx": ["avx512bf16", "amx"]}.get(isa, []):
            assert f"{level}-bf16" in paths and f"{level}-int4-bf16" in paths and f"{level}-bf16-wide" in paths
            assert (f"{level}-int4-fused" in paths) == (k % 64 == 0)


def test_demo_runs_every_variant_and_its_kernels_match(tmp_path, capsys):
    from slimformer import demo
    out = tmp_path / "demo.json"
    demo.main(["--hidden", "128", "--layers", "1", "--vocab", "256", "--reps", "1", "--prompt-len", "16",
               "--json", str(out)])
    rows = {r["variant"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"dense fp32", "int4 g128", "int3 g128", "dense bf16", "2:4 FFN bf16", "2:4+int4 FFN"}
    assert rows["int4 g128"]["kernel_err"] < 1e-5 and rows["2:4 FFN bf16"]["kernel_err"] < 2e-2
    assert rows["2:4+int4 FFN"]["kernel_err"] < 2e-2
    assert rows["2:4+int4 FFN"]["linear_mib"] < rows["2:4 FFN bf16"]["linear_mib"] < rows["dense bf16"]["linear_mib"]
    assert "2:4 FFN bf16" in capsys.readouterr().out


def test_bench_tokens_script_writes_its_json(tmp_path):
    out = tmp_path / "t.json"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_tokens.py"), "--shapes", "deit-s",
                          "--image-size", "64", "--layers", "2", "--batch", "2", "--tokens", "9", "--reps", "1",
                          "--repeats", "1", "--methods", "tome", "zero-tprune", "--json", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    d = json.loads(out.read_text())
    assert [r["method"] for r in d["encoders"]] == ["unpruned", "tome", "tome (every 3)", "zero-tprune",
                                                    "zero-tprune (every 3)"]
    assert d["attention"][0]["tokens"] == 9 and d["attention"][0]["sdpa"] > 0
    assert all(0 <= r["bookkeeping_share"] < 1 for r in d["encoders"][1:])
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import results_tables
    results_tables.RESULTS = tmp_path
    text = results_tables.tokens_speed("t.json")
    assert "| deit-s | zero-tprune |" in text and "| 9 |" in text


def test_eval_tokens_quality_trains_and_scores_the_digits_vit(tmp_path):
    pytest.importorskip("sklearn", reason="the digits ViT needs scikit-learn's digits (make's test dependencies)")
    out = tmp_path / "q.json"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "eval_tokens_quality.py"), "--skip-minilm",
                          "--epochs", "1", "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    d = json.loads(out.read_text())
    rows = d["vit"]["rows"]
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import eval_tokens_quality
    assert rows[0]["method"] == "unpruned" and len(rows) == 1 + len(eval_tokens_quality.METHODS) * 4
    assert all(0 <= r["top1"] <= 100 for r in rows)
    import results_tables
    results_tables.RESULTS = tmp_path
    assert "| Zero-TPrune (keys) |" in results_tables.tokens_quality("q.json")
