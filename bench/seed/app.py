"""The seed document's deployment, as a baseline for bench/serve.py: a Flask app that
loads a torch MLP and answers ``POST /predict`` ``{"features": [...]}`` with
``{"prediction": p}``, run under ``gunicorn -w 3 -k gevent`` (bench/serve.py starts it).

It serves the same saved model as ``dcsched serve`` (an ``mlp`` model directory:
``weights.pt``, ``model.json``, ``preprocessing.json``): the scaler in numpy, then the
network in torch, one request at a time, as the seed did. Needs the ``bench`` extra
(flask, gunicorn, gevent). ``SEED_MODEL_DIR`` names the model directory.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from flask import Flask, jsonify, request
from torch import nn

torch.set_num_threads(1)
MODEL_DIR = Path(os.environ["SEED_MODEL_DIR"])
_meta = json.loads((MODEL_DIR / "model.json").read_text())
_scaler = json.loads((MODEL_DIR / "preprocessing.json").read_text())
_mean = np.asarray(_scaler["mean"], dtype=np.float32)
_scale = np.asarray(_scaler["scale"], dtype=np.float32)


def _network() -> nn.Sequential:
    layers: list[nn.Module] = []
    width = int(_meta["info"]["n_features"])
    for units in _meta["params"]["hidden"]:
        layers += [nn.Linear(width, units), nn.ReLU()]
        width = units
    layers.append(nn.Linear(width, 1))
    net = nn.Sequential(*layers)
    net.load_state_dict(torch.load(MODEL_DIR / "weights.pt", weights_only=True))
    return net.eval()


model = _network()
app = Flask(__name__)


@app.post("/predict")
def predict():  # type: ignore[no-untyped-def]
    features = request.get_json()["features"]
    x = (np.asarray(features, dtype=np.float32) - _mean) / _scale
    with torch.no_grad():
        probability = torch.sigmoid(model(torch.from_numpy(x).unsqueeze(0)))[0, 0].item()
    return jsonify({"prediction": probability})
