"""Train a tiny ccfraud-like classifier and write an MLServer model directory (run with MLServer's Python).

    /opt/mlserver-venv/bin/python examples/mlserver/train.py /tmp/mlserver-models [--http-port 8080 ...]

Writes DIR/settings.json (server: loopback ports, no worker pool) and DIR/ccfraud/{model.joblib,
model-settings.json} (the model's V2 metadata declares its one input ``tensor`` FP32 [-1, 29], which bench's
preflight checks the data against). 29 float features like the ccfraud set; a logistic rule on a few of them
makes the labels, so the model is a real fitted classifier that answers one score per row.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import joblib
import numpy as np
from sklearn.linear_model import LogisticRegression

FEATURES = 29


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir", type=Path)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--http-port", type=int, default=8080)
    ap.add_argument("--grpc-port", type=int, default=8081)
    ap.add_argument("--metrics-port", type=int, default=8082)
    ap.add_argument("--rows", type=int, default=2000)
    args = ap.parse_args()

    rng = np.random.default_rng(7)
    x = rng.standard_normal((args.rows, FEATURES)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 3] - x[:, 13] > 1.5).astype(np.int64)
    model = LogisticRegression(max_iter=500).fit(x, y)

    model_dir = args.dir / "ccfraud"
    model_dir.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, model_dir / "model.joblib")
    (model_dir / "model-settings.json").write_text(json.dumps({
        "name": "ccfraud",
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.joblib", "version": "1"},
        "inputs": [{"name": "tensor", "datatype": "FP32", "shape": [-1, FEATURES]}],
        "outputs": [{"name": "predict", "datatype": "INT64", "shape": [-1, 1]}],
    }, indent=2))
    (args.dir / "settings.json").write_text(json.dumps({
        "host": args.host,
        "http_port": args.http_port,
        "grpc_port": args.grpc_port,
        "metrics_port": args.metrics_port,
        "parallel_workers": 0,  # answer in the server process: no worker pool to start (faster, fewer processes)
        "debug": False,
    }, indent=2))
    print(f"model ccfraud written to {model_dir}; start: mlserver start {args.dir}")


if __name__ == "__main__":
    main()
