"""What GPTQ, GPTQv2 and RTN produce on a small model, reduced to digests: the pinned outputs that
test_engine_pins.py compares the calibration engine against.

    .venv/bin/python tests/pin_engine.py        # prints the JSON that tests/data/engine_pins.json holds

The digests are bit-exact, so they depend on the machine's float kernels (torch picks ISA-specific matmul and
Cholesky code): each entry is keyed by a fingerprint of those kernels' results on fixed inputs. On a machine with
another fingerprint the test compares what does not depend on rounding (layer names, shapes, methods) and the
logits to a tolerance."""
import hashlib
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import slimformer  # noqa: E402
from models import inputs, tiny  # noqa: E402
from slimformer import GPTQConfig, QuantLinear  # noqa: E402

CONFIGS = {
    "gptq": dict(bits=4, group_size=32, desc_act=True),
    "gptqv2": dict(bits=3, group_size=64, sym=False, asym_calibration=True, asym_method="lstsq", asym_alpha=0.5),
    "rtn": dict(bits=4, group_size=64, method="rtn", sym=False),
}


def digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().contiguous().cpu().numpy().tobytes()).hexdigest()[:16]


def fingerprint() -> str:
    """Results of the float kernels GPTQ runs on (matmul, Cholesky, its inverse) for fixed inputs."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(96, 160, generator=g)
    h = a.t() @ a / 96 + torch.eye(160) * 0.1
    l = torch.linalg.cholesky(h.double())
    torch_kernels = digest(torch.cat([h.flatten(), torch.cholesky_inverse(l).float().flatten(),
                                      torch.nn.functional.linear(a, a[:64]).flatten()]))
    isa = slimformer.ops.cpu_isa()
    # fp32 activations (these pins) run the same GPTQ kernels at avx512bf16 as at avx512vnni: the bf16 kernel of that
    # level only takes bf16 activations
    isa = "avx512vnni" if isa == "avx512bf16" else isa
    return f"{torch_kernels}-{isa}"  # the logits also depend on our kernels' ISA path


def run(method: str):
    torch.manual_seed(0)
    model = tiny("llama", layers=2, hidden=128)
    calib = inputs("llama", 4, length=32, seed=1)
    held_out = inputs("llama", 1, length=32, seed=2)[0]
    report = []
    model = slimformer.quantize(model, GPTQConfig(**CONFIGS[method]), calib, progress=False, report=report)
    layers = {n: {k: digest(getattr(m, k)) for k in ("qweight", "qzeros", "scales", "g_idx")}
              for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    with torch.no_grad():
        logits = model(**held_out).logits
    rows = [dict(name=r.name, in_features=r.in_features, out_features=r.out_features, error=repr(r.error),
                 damp=repr(r.damp)) for r in report]
    return dict(layers=layers, report=rows, logits=digest(logits)), logits


def main():
    out = {"fingerprint": fingerprint(), "torch": torch.__version__, "cpu_features": slimformer.ops.cpu_features()}
    for method in CONFIGS:
        pins, logits = run(method)
        out[method] = pins
        out[method]["logits_sample"] = logits[0, :4, :8].flatten().tolist()
    print(json.dumps(out, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
