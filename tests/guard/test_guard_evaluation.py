"""OOD metrics against hand-computed values, the evaluation report, probes, the histogram PNG."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hardened.errors import InputError
from hardened.guard import GuardedClassifier, make_score
from hardened.guard.evaluation import evaluate_guard, ood_metrics
from hardened.guard.probes import inverted, load_probe, natural_images, to_format, uniform_noise
from hardened.report.plots import plot_score_histograms


def test_ood_metrics_known_values():
    ids = np.arange(100.0)  # 0..99
    oods = np.arange(50.0, 150.0)  # 50..149
    m = ood_metrics(ids, oods, threshold=94.5)
    # accepted OOD: 50..94 -> 45 of 100
    assert m["fnr"] == pytest.approx(0.45) and m["detection_rate"] == pytest.approx(0.55)
    # AUROC = P(ood > id) + 0.5 P(tie): pairs with ood > id = sum over ood o of #(id < o)
    wins = sum(min(o, 100) for o in range(50, 150)) + 0.5 * 50  # 50 ties count half
    assert m["auroc"] == pytest.approx(wins / 10000)
    # 95% of ID accepted at threshold 94: OOD 50..94 accepted -> 45%
    assert m["fpr_at_95_tpr"] == pytest.approx(0.45)


def test_ood_metrics_nan_counts_as_refused_and_bad_id_raises():
    m = ood_metrics(np.zeros(10), np.array([np.nan] * 5), threshold=1.0)
    assert m["fnr"] == 0.0 and m["auroc"] == 1.0
    mixed = ood_metrics(np.zeros(10), np.array([np.nan, 0.5, 2.0]), threshold=1.0)
    assert mixed["fnr"] == pytest.approx(1 / 3)
    with pytest.raises(InputError, match="in-distribution scores"):
        ood_metrics(np.array([np.nan, 1.0]), np.ones(3), threshold=1.0)


def test_evaluate_guard_report_and_plot(digits_model, digits, noise, tmp_path):
    score = make_score("mahalanobis", digits_model).fit(digits.train)
    guard = GuardedClassifier(digits_model, score)
    guard.calibrate(digits.test.x[:150], fpr=0.05)
    held = digits.test.x[150:]
    result = evaluate_guard(guard, held, {"noise": noise, "inverted": inverted(held)}, id_name="digits")
    assert [r.name for r in result.ood] == ["noise", "inverted"]
    assert 0.0 <= result.id_fpr <= 0.2
    for r in result.ood:
        assert r.auroc > 0.99 and r.fnr < 0.05
        assert set(r.overconfident) == {"0.99", "0.95", "0.75"}
        assert r.overconfident["0.99"] <= r.overconfident["0.95"] <= r.overconfident["0.75"]
    report = json.loads(json.dumps(result.to_dict()))
    assert report["ood"][0]["name"] == "noise" and "summary" in report["in_distribution"]
    png = plot_score_histograms(result, tmp_path / "scores.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_probes_shapes_ranges_and_seeds(digits):
    for shape in [(1, 8, 8), (3, 32, 32), (1, 28, 28)]:
        for images in (uniform_noise(5, shape, seed=1), natural_images(5, shape, seed=1)):
            assert images.shape == (5, *shape) and images.dtype == torch.float32
            assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0
    assert torch.equal(natural_images(3, (1, 8, 8), seed=2), natural_images(3, (1, 8, 8), seed=2))
    assert not torch.equal(natural_images(3, (1, 8, 8), seed=2), natural_images(3, (1, 8, 8), seed=3))
    x = digits.test.x[:4]
    assert torch.equal(load_probe("inverted", x, 4), 1 - x)
    assert load_probe("noise", x, 7).shape == (7, 1, 8, 8)
    # RGB -> luma, then resize
    rgb = torch.zeros(1, 3, 4, 4)
    rgb[:, 1] = 1.0
    assert torch.allclose(to_format(rgb, (1, 2, 2)), torch.full((1, 1, 2, 2), 0.587))
    with pytest.raises(InputError):
        to_format(torch.rand(1, 2, 4, 4), (3, 4, 4))


def test_a_user_folder_is_used_whole_in_the_in_distribution_format(tmp_path):
    from PIL import Image

    (tmp_path / "ood" / "sub").mkdir(parents=True)
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0)]
    for i, colour in enumerate(colours):  # mixed sizes and modes, flat and in a sub-folder
        image = Image.new("RGB", (9 + i, 20 - i), colour)
        image.save(tmp_path / "ood" / ("sub" if i % 2 else ".") / f"{i}.png")
    Image.new("L", (5, 5), 128).save(tmp_path / "ood" / "gray.png")
    like = torch.zeros(3, 1, 8, 8)
    x = load_probe(str(tmp_path / "ood"), like, 1000)
    assert x.shape == (6, 1, 8, 8)  # every image, not a split, however large n is
    luma = {name: sum(w * c / 255 for w, c in zip((0.299, 0.587, 0.114), colour, strict=True))
            for name, colour in zip(("0", "1", "2", "3", "4"), colours, strict=True)}
    files = sorted((tmp_path / "ood").rglob("*.png"))
    expected = [128 / 255 if f.stem == "gray" else luma[f.stem] for f in files]
    torch.testing.assert_close(x.mean(dim=(1, 2, 3)), torch.tensor(expected), atol=2e-3, rtol=0)
    assert load_probe(str(tmp_path / "ood"), like, 2).shape[0] == 2
