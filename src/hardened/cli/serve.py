"""``hardened serve`` (the HTTP service) and ``hardened predict --url`` (its client)."""

from __future__ import annotations

import json
import logging
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from hardened.cli._common import (
    Common,
    Option,
    out,
    resolve_device,
    seed_everything,
    shared_options,
)
from hardened.cli.guard import TrustFactoryOption
from hardened.errors import ConfigError

if TYPE_CHECKING:
    from hardened.serve.predictors import Predictor

_GUARD_HELP = "folder written by 'hardened guard fit' (serve the guarded classifier)"


def _predictor(common: Common, guard_dir: Path | None, trust_factory: bool, smooth: float | None,
               n0: int, n: int, alpha: float, input_shape: str | None) -> Predictor:
    """The predictor the options name: a guard folder, or a model (bare or smoothed)."""
    from torch import nn

    from hardened.cli._common import parse_ints
    from hardened.models import load_model
    from hardened.serve.predictors import GuardPredictor, ModelPredictor, SmoothedPredictor

    device = resolve_device(common.device)
    if (guard_dir is None) == (common.model is None):
        raise ConfigError("give exactly one of --guard DIR (a guarded classifier) or --model M")
    if guard_dir is not None:
        if smooth is not None:
            raise ConfigError("--smooth applies to --model, not to --guard")
        from hardened.guard import GuardedClassifier

        guard = GuardedClassifier.load(guard_dir, trust_factory=trust_factory)
        guard.model.to(device)
        return GuardPredictor(guard)
    loaded = load_model(str(common.model), common.weights)  # backend "torch": always an nn.Module
    model = loaded.model
    if not isinstance(model, nn.Module):
        raise ConfigError(f"cannot serve {common.model}: it did not load as a PyTorch module")
    model.to(device)
    dims = parse_ints(input_shape, "--input-shape") if input_shape else list(loaded.info.input_shape or ())
    if len(dims) != 3 or min(dims) < 1:
        raise ConfigError("the model records no input shape C×H×W (or --input-shape is not three positive "
                          "integers); pass --input-shape C,H,W (e.g. 1,28,28)")
    shape = (dims[0], dims[1], dims[2])
    if smooth is None:
        return ModelPredictor(model, shape, loaded.info.classes)
    return SmoothedPredictor(model, shape, smooth, n0=n0, n=n, alpha=alpha, seed=common.seed,
                             classes=loaded.info.classes)


@shared_options("model", "weights", "device", "seed",
                model=Option(None, "classifier to serve (instead of --guard)", optional=True), device="cpu")
def serve_command(
    common: Common,
    guard_dir: Annotated[Path | None, typer.Option("--guard", help=_GUARD_HELP)] = None,
    trust_factory: TrustFactoryOption = False,
    smooth: Annotated[float | None, typer.Option("--smooth", help="serve the model smoothed with Gaussian noise of this sigma (certified radius, abstentions)")] = None,
    n0: Annotated[int, typer.Option("--n0", min=1, help="smoothing: selection samples per image")] = 100,
    n: Annotated[int, typer.Option("--n", min=1, help="smoothing: estimation samples per image")] = 1000,
    alpha: Annotated[float, typer.Option("--alpha", help="smoothing: failure probability of each certificate")] = 0.001,
    input_shape: Annotated[str | None, typer.Option("--input-shape", help="C,H,W when the model does not record it")] = None,
    host: Annotated[str, typer.Option("--host", help="address to bind (127.0.0.1: this machine only)")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535)] = 8000,
    max_batch: Annotated[int, typer.Option("--max-batch", min=1, help="most images per model batch (1: no micro-batching; on CPU, batches past 32 gained nothing and merged requests ran slower)")] = 32,
    max_wait_ms: Annotated[float, typer.Option("--max-wait-ms", min=0, help="longest a request waits to fill a batch")] = 5.0,
    max_queue: Annotated[int, typer.Option("--max-queue", min=1, help="most waiting requests; beyond it 503 + Retry-After")] = 256,
    max_images: Annotated[int, typer.Option("--max-images", min=1, help="most images per request")] = 64,
    max_body_mb: Annotated[float, typer.Option("--max-body-mb", min=0.001, help="largest request body in MiB")] = 16.0,
    api_key: Annotated[str | None, typer.Option("--api-key", envvar="HARDENED_API_KEY", help="require this key in the X-API-Key header (better: set HARDENED_API_KEY)")] = None,
    trace: Annotated[bool, typer.Option("--trace/--no-trace", help="run the batch function as one traced TorchScript graph where it gives the same answers as eager (off: on CPU under load it was slower)")] = False,
) -> None:
    """Serve a guarded (or bare, or smoothed) classifier over HTTP: POST /v1/predict, /metrics."""
    from hardened.serve import require_serve_extra

    require_serve_extra()
    import uvicorn

    from hardened.serve.app import ServeSettings, create_app

    seed_everything(common.seed)
    settings = ServeSettings(max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue,
                             max_images=max_images, max_body_bytes=int(max_body_mb * 2**20), api_key=api_key,
                             trace=trace)
    predictor = _predictor(common, guard_dir, trust_factory, smooth, n0, n, alpha, input_shape)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    access = logging.getLogger("hardened.serve.access")
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    access.propagate = False
    print(json.dumps({"event": "start", "kind": predictor.kind, "url": f"http://{host}:{port}",
                      "input_shape": list(predictor.input_shape)}), file=sys.stderr, flush=True)
    # uvicorn answers SIGTERM by draining, then raises the signal again under the handler it found:
    # a no-op handler makes a drained stop a clean exit 0 (the default one would end the process
    # as killed by SIGTERM after the drain)
    signal.signal(signal.SIGTERM, lambda *_: None)
    uvicorn.run(create_app(predictor, settings), host=host, port=port, access_log=False,
                log_level="warning", timeout_graceful_shutdown=30)
    print(json.dumps({"event": "stop", "reason": "drained"}), file=sys.stderr, flush=True)


def predict_command(
    files: Annotated[list[Path], typer.Argument(help="PNG or JPEG files to classify")],
    url: Annotated[str, typer.Option("--url", help="the service, e.g. http://127.0.0.1:8000")],
    api_key: Annotated[str | None, typer.Option("--api-key", envvar="HARDENED_API_KEY", help="X-API-Key to send")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the service's JSON answer instead")] = False,
    timeout: Annotated[float, typer.Option("--timeout", min=0.1, help="seconds to wait for the answer")] = 60.0,
) -> None:
    """Ask a running 'hardened serve' about image files: one line per image."""
    from hardened.serve.client import predict_files

    answer = predict_files(url, files, api_key=api_key, timeout=timeout)
    if json_out:
        out.print_json(data=answer)
        return
    for path, item in zip(files, answer["predictions"], strict=False):
        said = item["class_name"] or item["label"]
        extra = f", radius {item['radius']:.4g}" if item.get("radius") else ""
        if item["accepted"]:
            score = f" (score {item['score']:.4g} <= {item['threshold']:.4g})" if item.get("score") is not None else ""
            out.print(f"{path.name}: {said}{score}{extra}", highlight=False, soft_wrap=True)
        else:
            out.print(f"{path.name}: refused ({item['reason']})", highlight=False, soft_wrap=True)
