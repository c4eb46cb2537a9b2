"""Where the dense CRF's CUDA results depart from the CPU's (needs a GPU; the output of one H100 run is
``benchmarks/results/cuda/crf_cpu_vs_cuda.txt``): the appearance features, the permutohedral filter on
its own, and mean field after 0-10 iterations with the appearance kernel, the smoothness kernel, or both.

    PYTHONPATH=. python benchmarks/crf_cuda_diff.py
"""

import torch

from pixelwise.crf import dense_crf, permutohedral_filter
from pixelwise.crf.mean_field import _appearance_features
from tests.test_crf import SMALL, scene


def main() -> None:
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    image, probs, _ = scene(0, height=37, width=53)
    img = torch.as_tensor(image).unsqueeze(0)
    f = _appearance_features(img, SMALL["theta_alpha"], SMALL["theta_beta"])
    fg = _appearance_features(img.cuda(), SMALL["theta_alpha"], SMALL["theta_beta"]).cpu()
    print("features", tuple(f.shape), "cpu vs cuda features max", (f - fg).abs().max().item())
    points = f.t().contiguous()
    values = torch.rand(points.shape[0], 4)
    a, b = permutohedral_filter(points, values), permutohedral_filter(points.cuda(), values.cuda()).cpu()
    print("lattice filter rel", ((a - b).norm() / a.norm()).item(), "max", (a - b).abs().max().item())
    for iterations in [0, 1, 2, 5, 10]:
        for w1, w2 in [(SMALL["w1"], 0.0), (0.0, SMALL["w2"]), (SMALL["w1"], SMALL["w2"])]:
            kw = {**SMALL, "w1": w1, "w2": w2}
            c = dense_crf(image, probs, iterations=iterations, **kw)
            g = dense_crf(image, probs.cuda(), iterations=iterations, **kw).cpu()
            print(
                f"iters {iterations} w1 {w1} w2 {w2}: max {(c - g).abs().max().item():.2e} "
                f"mean {(c - g).abs().mean().item():.2e}"
            )


if __name__ == "__main__":
    main()
