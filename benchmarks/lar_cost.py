"""Cost of LAR from forward quantities (Eq. 1) against the SVD route (Eqs. 2–3), in one run.

Scale: the unembedding of the default model over the full modular-addition dataset (p = 97,
9,409 rows of width 128, W is 97 × 128). Prints median times and their ratios.

    python benchmarks/lar_cost.py [--p 97] [--threads 1]
"""

import argparse

import torch
from torch.utils import benchmark

from grokking.algorithmic.model import Transformer
from grokking.algorithmic.tasks import make_dataset
from grokking.lar import LARProbe, lar, lar_from_spectra, spectra


def median_s(stmt, **globals_):
    timer = benchmark.Timer(stmt=stmt, globals=globals_, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=1.0).median


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--p", type=int, default=97)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    data = make_dataset("add", args.p)
    model = Transformer(data.vocab_size, data.n_classes).eval()
    with torch.no_grad():
        _, hidden = model(data.inputs, return_activations=True)
        outputs = model.unembed(hidden)
    weight = model.unembed.weight.detach()
    probe = LARProbe(model.unembed)
    probe.remove()  # timed by calling its accumulation directly, without a forward pass

    def forward_sums():  # what the probe adds to a forward pass, plus the read-out
        probe.reset()
        probe._accumulate(model.unembed, hidden, outputs)
        return probe.value()

    def svd_route():
        p, q = spectra(weight, hidden)
        return lar_from_spectra(p, q)

    with torch.no_grad():
        t_forward = median_s("model(tokens)", model=model, tokens=data.inputs)
    t_sums = median_s("f()", f=forward_sums)
    t_eq1 = median_s("lar(w, x)", lar=lar, w=weight, x=hidden)
    t_svd = median_s("f()", f=svd_route)
    rows, n = hidden.shape
    print(f"scale: {rows} rows x {n} inputs, W {tuple(weight.shape)}, {args.threads} thread(s)")
    print(f"model forward over the dataset : {t_forward * 1e3:8.3f} ms")
    print(f"Eq. 1 from forward sums (probe): {t_sums * 1e3:8.3f} ms")
    print(f"Eq. 1 recomputing Y = X W^T    : {t_eq1 * 1e3:8.3f} ms")
    print(f"SVD route (Eqs. 2-3)           : {t_svd * 1e3:8.3f} ms")
    print(f"ratio SVD route / probe        : {t_svd / t_sums:8.1f}x")
    print(f"probe cost / model forward     : {t_sums / t_forward:8.1%}")
    print(f"LAR agreement |probe - SVD|    : {abs(forward_sums() - svd_route()):.2e}")


if __name__ == "__main__":
    main()
