"""The `slimformer quantize / eval / bench` commands on tiny models saved as Hugging Face directories."""
import json

import pytest

from models import tiny
from slimformer import cli

TEXT = ("The interpreter reads a statement, evaluates it and prints the result. A module is a file containing "
        "definitions and statements. Functions are defined with the def keyword and may return values. "
        "Exceptions are raised when an error is detected during execution of the program. ") * 12


def _tokenizer(text):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator([text], trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>", "<pad>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    tok = _tokenizer(TEXT)
    (root / "text.txt").write_text(TEXT)
    for name, arch, hidden in (("llama", "llama", 128), ("bert", "bert", 128), ("bert-small", "bert", 64)):
        model = tiny(arch, hidden=hidden)
        model.save_pretrained(str(root / name), safe_serialization=True)
        tok.save_pretrained(str(root / name))
    (root / "binary.txt").write_bytes(bytes(range(256)) * 4)
    (root / "a-file").write_text("not a directory")
    return root


def test_quantize_eval_bench_causal_lm(workspace, capsys):
    out = workspace / "llama-int4"
    assert cli.main(["quantize", str(workspace / "llama"), str(out), "--bits", "4", "--group-size", "64",
                     "--desc-act", "--asym-calibration", "--calib", str(workspace / "text.txt"), "--nsamples", "4",
                     "--seqlen", "32"]) == 0
    printed = capsys.readouterr().out
    assert "model.layers.1.mlp.down_proj" in printed and "saved 14 quantized layers" in printed
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["bits"] == 4 and qc["desc_act"] is True and qc["quant_method"] == "gptq"
    assert qc["asym_calibration"] is True and qc["asym_alpha"] == 0.25
    assert (out / "tokenizer.json").exists()

    ppl = {}
    for name in ("llama", "llama-int4"):
        assert cli.main(["eval", str(workspace / name), "--text", str(workspace / "text.txt"), "--seqlen", "64"]) == 0
        ppl[name] = json.loads(capsys.readouterr().out)["perplexity"]
    assert 1 < ppl["llama"] < 1e4 and 1 < ppl["llama-int4"] < 1e4

    assert cli.main(["bench", str(out), "--reference", str(workspace / "llama"), "--seqlen", "16",
                     "--new-tokens", "3"]) == 0
    table = capsys.readouterr().out
    assert "| dense |" in table and "| compressed |" in table and "decode tokens/s speedup" in table


def test_encoder_eval_needs_reference_and_reports_cosine(workspace, capsys):
    out = workspace / "bert-int4"
    assert cli.main(["quantize", str(workspace / "bert"), str(out), "--method", "rtn", "--group-size", "32"]) == 0
    capsys.readouterr()
    assert cli.main(["eval", str(out), "--text", str(workspace / "text.txt")]) == 2
    assert "--reference" in capsys.readouterr().err
    assert cli.main(["eval", str(out), "--text", str(workspace / "text.txt"), "--reference",
                     str(workspace / "bert")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert 0.9 < result["mean_cosine"] <= 1.0001 and result["sentences"] > 0
    assert result["reference"] == str(workspace / "bert") and "cosine similarity" in result["metric"]


def test_encoder_gptq_calibrates_on_sentences(workspace, capsys):
    out = workspace / "bert-gptq"
    assert cli.main(["quantize", str(workspace / "bert"), str(out), "--group-size", "32", "--calib",
                     str(workspace / "text.txt"), "--nsamples", "6"]) == 0
    assert "calibration: 6 sentences" in capsys.readouterr().out
    (workspace / "words.txt").write_text("no sentence here")
    assert cli.main(["quantize", str(workspace / "bert"), str(out), "--calib", str(workspace / "words.txt")]) == 2
    assert "no sentences" in capsys.readouterr().err


@pytest.mark.parametrize("args,message", [
    (["quantize", "{ws}/nowhere", "{ws}/x"], "does not exist"),
    (["quantize", "{ws}/llama", "{ws}/x"], "--calib"),
    (["quantize", "{ws}/llama", "{ws}/x", "--bits", "5", "--method", "rtn"], "bits must be one of"),
    (["quantize", "{ws}/llama", "{ws}/x", "--calib", "{ws}/missing.txt"], "does not exist"),
    (["eval", "{ws}/llama", "--text", "{ws}/missing.txt"], "does not exist"),
    (["bench", "{ws}/nowhere"], "does not exist"),
    (["bench", "{ws}/text.txt"], "is a file"),
    # checked before any quantization starts
    (["quantize", "{ws}/llama", "{ws}/a-file", "--method", "rtn"], "exists and is not a directory"),
    (["quantize", "{ws}/llama", "{ws}/llama", "--method", "rtn"], "would overwrite the dense model"),
    (["quantize", "{ws}/llama", "{ws}/x", "--calib", "{ws}/binary.txt"], "NUL bytes"),
    (["quantize", "{ws}/llama", "{ws}/x", "--calib", "{ws}/text.txt", "--nsamples", "-3"], "positive integer"),
    (["quantize", "{ws}/llama", "{ws}/x", "--calib", "{ws}/text.txt", "--seqlen", "5000"], "max_position_embeddings"),
    (["bench", "{ws}/llama", "--batch", "0"], "positive integer"),
    (["bench", "{ws}/llama", "--seqlen", "0"], "positive integer"),
    (["bench", "{ws}/llama", "--new-tokens", "0"], "positive integer"),
    (["bench", "{ws}/llama", "--seqlen", "5000"], "longer than the model's max_position_embeddings"),
    (["eval", "{ws}/llama", "--text", "{ws}/text.txt", "--seqlen", "1"], "at least 2"),
    (["eval", "{ws}/llama", "--text", "{ws}/text.txt", "--max-tokens", "0"], "positive integer"),
    (["eval", "{ws}/bert", "--text", "{ws}/text.txt", "--reference", "{ws}/bert-small"], "not the same model"),
    (["bench", "{ws}/llama", "--prune-tokens", "tome"], "causal LM"),
    (["bench", "{ws}/bert", "--keep", "0.5"], "pass --prune-tokens"),
    (["bench", "{ws}/bert", "--prune-tokens", "tome", "--keep", "1.5"], "fraction"),
    (["eval", "{ws}/bert", "--text", "{ws}/text.txt", "--prune-tokens", "tome", "--keep", "0.6", "--r", "2"],
     "one of --keep"),
    (["bench", "{ws}/bert", "--prune-tokens", "tome", "--r", "2", "--prune-every", "2"], "--prune-every spreads"),
    (["bench", "{ws}/bert", "--prune-tokens", "tome", "--prune-every", "0"], "every an int >= 1"),
    (["bench", "{ws}/bert", "--prune-tokens", "zero-tprune", "--matching", "greedy"], "it needs --prune-tokens tome"),
])
def test_cli_errors(workspace, capsys, args, message):
    try:
        rc = cli.main([a.format(ws=workspace) for a in args])
    except SystemExit as e:  # argparse rejects the value itself
        rc = e.code
    assert rc == 2
    assert message in capsys.readouterr().err
    assert not (workspace / "x").exists()


def test_sparsify_eval_bench(workspace, capsys):
    out = workspace / "llama-2of4"
    assert cli.main(["sparsify", str(workspace / "llama"), str(out), "--calib", str(workspace / "text.txt"),
                     "--nsamples", "4", "--seqlen", "32"]) == 0
    printed = capsys.readouterr().out
    assert "model.layers.1.mlp.down_proj" in printed and "saved 6 2:4 layers" in printed
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors" and qc["sparsity_config"]["format"] == "sparse-24-bitmask"
    assert cli.main(["eval", str(out), "--text", str(workspace / "text.txt"), "--seqlen", "64"]) == 0
    assert 1 < json.loads(capsys.readouterr().out)["perplexity"] < 1e4
    assert cli.main(["bench", str(out), "--reference", str(workspace / "llama"), "--seqlen", "16",
                     "--new-tokens", "3"]) == 0
    assert "| compressed |" in capsys.readouterr().out
    # magnitude needs no calibration text; wanda does, and says so before loading anything heavy
    assert cli.main(["sparsify", str(workspace / "llama"), str(workspace / "llama-mag"), "--method", "magnitude",
                     "--n", "4", "--m", "8", "--targets", "all"]) == 0
    assert "saved 14 4:8 layers" in capsys.readouterr().out
    # the joint pass: 2:4 + int4 layers, which eval loads back
    assert cli.main(["sparsify", str(workspace / "llama"), str(workspace / "llama-24-int4"), "--calib",
                     str(workspace / "text.txt"), "--nsamples", "4", "--seqlen", "32", "--bits", "4",
                     "--group-size", "32"]) == 0
    capsys.readouterr()
    qc = json.loads((workspace / "llama-24-int4" / "config.json").read_text())["quantization_config"]
    assert qc["format"] == "slimformer-sparse-24-int4"
    assert cli.main(["eval", str(workspace / "llama-24-int4"), "--text", str(workspace / "text.txt"),
                     "--seqlen", "64"]) == 0
    assert 1 < json.loads(capsys.readouterr().out)["perplexity"] < 1e4
    assert cli.main(["sparsify", str(workspace / "llama"), str(workspace / "x"), "--method", "wanda"]) == 2
    assert "--calib FILE.txt is required for wanda" in capsys.readouterr().err
    assert cli.main(["sparsify", str(workspace / "llama"), str(workspace / "llama")]) == 2
    assert "overwrite the dense model" in capsys.readouterr().err


def test_token_pruning_bench_and_eval(workspace, capsys):
    assert cli.main(["bench", str(workspace / "bert"), "--prune-tokens", "zero-tprune", "--keep", "0.65",
                     "--seqlen", "32", "--batch", "2"]) == 0
    table = capsys.readouterr().out
    assert "| model |" in table and "zero-tprune (FLOPs 0.65)" in table and "sequences/s speedup" in table
    assert cli.main(["bench", str(workspace / "bert"), "--prune-tokens", "tome", "--keep", "0.65", "--prune-every",
                     "2", "--seqlen", "32", "--batch", "2"]) == 0
    assert "tome (FLOPs 0.65, every 2 layers)" in capsys.readouterr().out
    assert cli.main(["eval", str(workspace / "bert"), "--text", str(workspace / "text.txt"), "--prune-tokens", "tome",
                     "--r", "2", "--similarity", "hidden", "--matching", "greedy"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["reference"] == str(workspace / "bert") and result["token_pruning"]["method"] == "tome"
    assert result["token_pruning"]["matching"] == "greedy"
    assert 0.0 < result["mean_cosine"] <= 1.0001
