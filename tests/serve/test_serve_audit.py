"""An outputs-only audit against a real ``hardened serve`` process on a loopback port: every
section present (measured, substituted or skipped with its reason), every query counted, the
same clean accuracy as the model served."""

from __future__ import annotations

import dataclasses

from typer.testing import CliRunner

from hardened._util.batching import predict_logits
from hardened.audit import Stage, run_audit
from hardened.audit import stage as stage_module
from hardened.audit.stages.clean import CleanStage
from hardened.cli.main import app
from hardened.data import Splits
from hardened.models import HttpTarget
from hardened.registry import Registry
from helpers import TINY_BUDGET

STAGES = ("clean", "robustness", "minimal", "spatial", "explain_attacks", "gallery", "certify", "guard", "sanity")
BUDGET = dataclasses.replace(TINY_BUDGET, n_eval=12, eps_linf=(0.0, 0.3), eps_l2=(0.0, 1.0), n_minimal=4,
                             fmn_steps=10, n_gallery=2, n_guided=6, n_certify=2, smoothing_n=100,
                             n_guard_fit=120, n_guard_eval=30, headline_linf=0.3, headline_l2=1.0)


def test_an_outputs_only_audit_of_a_served_model_completes_with_query_counts(
        start_server, guard_dir, digits, digits_model, tmp_path, monkeypatch):
    server = start_server(["--model", str(guard_dir.parent / "lenet.safetensors")])
    splits = Splits(train=digits.train.head(200), test=digits.test.head(60))
    target = HttpTarget(server.url, num_classes=10, max_batch=64)
    result = run_audit(target, splits, out_dir=tmp_path / "report", budget=BUDGET, seed=0,
                       model_name=server.url, surrogate=digits_model)
    stages = {s.name: s for s in result.stages}
    assert tuple(stages) == STAGES
    assert {n: s.status for n, s in stages.items()} == dict.fromkeys(STAGES, "ok") | {"explain_attacks": "skipped", "minimal": "skipped"}, \
        {n: s.message for n, s in stages.items()}
    assert "gives scores, not gradients" in stages["explain_attacks"].message
    expected = float((predict_logits(digits_model, splits.test.x).argmax(1) == splits.test.y).float().mean())
    assert stages["clean"].data["accuracy"] == expected
    assert result.access["kind"] == "outputs-only" and server.url in result.access["source"]
    assert result.queries == target.queries > 0
    assert stages["robustness"].data["transfer"] == {"attack": "mifgsm", "steps": BUDGET.pgd_steps}
    assert any(q.endswith("images sent to the outputs-only model in this section.") for q in stages["clean"].notes)
    assert any("clipped into [0, 1]" in n for n in stages["certify"].notes)

    # the CLI, on the same server: its plumbing (the clean stage only) and a refused mix of options
    fresh = Registry("audit stage", base=Stage, capabilities=stage_module.AUDIT_STAGES.capabilities)
    fresh.register(CleanStage.name)(CleanStage)  # the clean stage only: the CLI's plumbing is tested here
    monkeypatch.setattr(stage_module, "AUDIT_STAGES", fresh)
    runner = CliRunner()
    cli = runner.invoke(app, ["audit", "--target-url", server.url, "--data", "digits", "--out", str(tmp_path / "cli")])
    assert cli.exit_code == 0, cli.output
    assert "images sent to the model" in cli.output
    both = runner.invoke(app, ["audit", "--target-url", server.url, "--model", "x.onnx", "--data", "digits",
                               "--out", str(tmp_path / "other")])
    assert both.exit_code == 2 and "not both" in both.output
