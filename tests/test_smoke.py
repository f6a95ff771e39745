import torch

import hardened as hd


def test_package_imports_and_pgd_runs(cnn, blobs):
    result = hd.PGD(eps=0.1, steps=5)(cnn, blobs.x[:10], blobs.y[:10])
    assert result.x_adv.shape == blobs.x[:10].shape
    assert bool((result.norms["linf"] <= 0.1 + 1e-6).all())
    assert isinstance(hd.__version__, str)
    assert torch.equal(result.pred_adv, cnn(result.x_adv).argmax(1))
