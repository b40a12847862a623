"""Train the GRU and stateless fraud models and write them to `models/` as ONNX.

Run `python -m models.train` (needs torch, the `train` extra). It trains on generator
seed 1, builds the ONNX graphs from the weights (`bytewax_fraud.inference.graphs`), evaluates
them on the held-out seed with `models.evaluate`, and writes `metrics.json` and the model
card `README.md`.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass

import numpy as np
import onnx
import torch
from torch import nn

from bytewax_fraud import features as fx
from bytewax_fraud.connectors.generator import TransactionGenerator
from models import graphs
from models.evaluate import (
    GRU_FILE,
    GRU_SEQ_FILE,
    HIDDEN,
    MODELS_DIR,
    STATELESS_FILE,
    WINDOW,
    EvalConfig,
    Featurized,
    evaluate,
    featurize,
    sequence_batches,
)

COMMAND = "PYTHONPATH=. python -m models.train"


@dataclass(frozen=True)
class TrainConfig:
    """Training data and optimisation settings."""

    seed: int = 1
    users: int = 30_000
    events: int = 1_500_000
    gru_epochs: int = 8
    stateless_epochs: int = 4
    batch_users: int = 256
    lr: float = 2e-3
    pos_weight: float = 10.0
    torch_seed: int = 7


class GruNet(nn.Module):
    """GRU over standardised features with an MLP head on the hidden state."""

    def __init__(self, mean: np.ndarray, std: np.ndarray, hidden: int = HIDDEN) -> None:
        super().__init__()
        # Constants, not parameters: they are exported separately into the graph.
        self.mean = torch.tensor(mean, dtype=torch.float32)
        self.std = torch.tensor(std, dtype=torch.float32)
        self.gru = nn.GRU(fx.N_FEATURES, hidden)
        self.head = nn.Sequential(nn.Linear(hidden, 64), nn.ReLU(), nn.Linear(64, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [T, B] of x [T, B, F]."""
        y, _ = self.gru((x - self.mean) / self.std)
        return self.head(y)[..., 0]


class MlpNet(nn.Module):
    """Small MLP over the amount features."""

    def __init__(self, mean: np.ndarray, std: np.ndarray) -> None:
        super().__init__()
        # Constants, not parameters: they are exported separately into the graph.
        self.mean = torch.tensor(mean, dtype=torch.float32)
        self.std = torch.tensor(std, dtype=torch.float32)
        self.net = nn.Sequential(
            nn.Linear(len(fx.AMOUNT_FEATURES), 32), nn.ReLU(), nn.Linear(32, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [B] of x [B, len(AMOUNT_FEATURES)]."""
        return self.net((x - self.mean) / self.std)[:, 0]


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float32)


def _dense(layer: nn.Module) -> graphs.Dense:
    assert isinstance(layer, nn.Linear)
    return graphs.Dense(_np(layer.weight).T.copy(), _np(layer.bias))


def _stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return x.mean(axis=0).astype(np.float32), (x.std(axis=0) + 1e-3).astype(np.float32)


def train_gru(cfg: TrainConfig, data: Featurized) -> graphs.GruWeights:
    """Fit the GRU on whole per-user sequences (zero initial state, padded batches)."""
    torch.manual_seed(cfg.torch_seed)
    mean, std = _stats(data.features)
    net = GruNet(mean, std)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    loss_fn = nn.BCEWithLogitsLoss(reduction="none", pos_weight=torch.tensor(cfg.pos_weight))
    batches = list(sequence_batches(data, cfg.batch_users))
    rng = np.random.default_rng(cfg.torch_seed)
    for epoch in range(cfg.gru_epochs):
        total, t0 = 0.0, time.perf_counter()
        for i in rng.permutation(len(batches)):
            idx, mask = batches[i]
            x = torch.from_numpy(np.where(mask[..., None], data.features[idx], 0.0))
            y = torch.from_numpy(data.labels[idx].astype(np.float32))
            m = torch.from_numpy(mask.astype(np.float32))
            loss = (loss_fn(net(x.float()), y) * m).sum() / m.sum()
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            total += float(loss.detach())
        print(
            f"gru epoch {epoch}: loss {total / len(batches):.4f} ({time.perf_counter() - t0:.0f}s)"
        )
    g = net.gru.state_dict()
    return graphs.GruWeights(
        mean=mean,
        std=std,
        weight_ih=_np(g["weight_ih_l0"]),
        weight_hh=_np(g["weight_hh_l0"]),
        bias_ih=_np(g["bias_ih_l0"]),
        bias_hh=_np(g["bias_hh_l0"]),
        head=(_dense(net.head[0]), _dense(net.head[2])),
    )


def train_stateless(cfg: TrainConfig, data: Featurized) -> graphs.MlpWeights:
    """Fit the MLP on the amount features of single events."""
    torch.manual_seed(cfg.torch_seed)
    x_np = data.features[:, list(fx.AMOUNT_FEATURES)]
    mean, std = _stats(x_np)
    net = MlpNet(mean, std)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(cfg.pos_weight))
    x, y = torch.from_numpy(x_np), torch.from_numpy(data.labels.astype(np.float32))
    gen = torch.Generator().manual_seed(cfg.torch_seed)
    for epoch in range(cfg.stateless_epochs):
        total = 0.0
        perm = torch.randperm(x.shape[0], generator=gen)
        for lo in range(0, x.shape[0], 4096):
            sel = perm[lo : lo + 4096]
            loss = loss_fn(net(x[sel]), y[sel])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * sel.shape[0]
        print(f"stateless epoch {epoch}: loss {total / x.shape[0]:.4f}")
    return graphs.MlpWeights(
        n_features=fx.N_FEATURES,
        feature_indices=fx.AMOUNT_FEATURES,
        mean=mean,
        std=std,
        layers=(_dense(net.net[0]), _dense(net.net[2])),
    )


def sha256(path: object) -> str:
    """Hex sha256 of a file."""
    with open(str(path), "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _card(cfg: TrainConfig, metrics: dict, seconds: float) -> str:
    """The model card (models/README.md)."""
    ev = metrics["eval"]
    rows = "\n".join(
        f"| {name} | {m['roc_auc']:.4f} | {m['pr_auc']:.4f} | {m['recall_at_1pct_fpr']:.4f} |"
        for name, m in ev["models"].items()
    )
    feats = "\n".join(f"| {i} | `{n}` |" for i, n in enumerate(fx.FEATURE_NAMES))
    shas = "\n".join(f"| `{f}` | `{h}` |" for f, h in metrics["sha256"].items())
    f, h = fx.N_FEATURES, HIDDEN
    contract = "\n".join(
        [
            "| File | Inputs | Outputs |",
            "|---|---|---|",
            f"| `{GRU_FILE}` (serving, stateful) | `input_features` [batch, {f}] f32, "
            f"`input_hidden_state` [batch, {h}] f32 | `output_probability` [batch, 1], "
            f"`output_hidden_state` [batch, {h}] |",
            f"| `{GRU_SEQ_FILE}` (same weights; runs of events, offline) | "
            f"`input_features` [T, batch, {f}], "
            f"`input_hidden_state` [batch, {h}] | `output_probability` [T, batch, 1], "
            f"`output_hidden_state` [batch, {h}] |",
            f"| `{STATELESS_FILE}` (stateless) | `input_features` [batch, {f}] f32 "
            "| `output_probability` [batch, 1] |",
        ]
    )
    amount_names = ", ".join(f"`{fx.FEATURE_NAMES[i]}`" for i in fx.AMOUNT_FEATURES)
    return f"""# Fraud models (model card)

Generated by `{COMMAND}` ({seconds:.0f} s on 2 CPU cores). Do not edit by hand.

## Files and contract

{contract}

ONNX opset {graphs.OPSET}, built with `onnx.helper` from the trained weights
(`models/graphs.py`). `{GRU_FILE}` declares `{GRU_SEQ_FILE}` as its sequence form
(metadata `bytewax_fraud.sequence_form`: file name and sha256), so the scorer puts a user's
run of events in a batch through the GRU in one call.
The GRU is one ONNX `GRU` node (`linear_before_reset=1`) followed by an MLP head
({HIDDEN} -> 64 -> 1, sigmoid); a user's hidden state starts at zeros.
The stateless model is an MLP ({len(fx.AMOUNT_FEATURES)} -> 32 -> 1) over {amount_names} only
(gathered inside the graph, so it takes the same feature vector).

## Features (`bytewax_fraud/features.py`, window N = {WINDOW})

| # | Name |
|---|---|
{feats}

## Training data

`TransactionGenerator(users={cfg.users}, seed={cfg.seed}, partition_count=1).columns({cfg.events})`,
{metrics["train"]["fraud_events"]} fraud events; features computed per user in time order as in
serving. GRU: BCE with pos_weight {cfg.pos_weight}, Adam lr {cfg.lr}, {cfg.gru_epochs} epochs over
whole per-user sequences; stateless: {cfg.stateless_epochs} epochs; torch seed {cfg.torch_seed},
2 threads.

## Held-out metrics

Generator seed {ev["config"]["seed"]}, {ev["config"]["users"]} users, first {ev["config"]["events"]}
events ({ev["fraud_events"]} fraud). The rule scores amount / rolling mean of the window.
Reproduce with `PYTHONPATH=. python -m models.evaluate` (`tests/unit/models/test_models.py` does).

| Model | ROC-AUC | PR-AUC | Recall @ 1% FPR |
|---|---|---|---|
{rows}

## sha256

| File | sha256 |
|---|---|
{shas}
"""


def main(cfg: TrainConfig | None = None, eval_cfg: EvalConfig | None = None) -> dict:
    """Train both models, export them, evaluate, and write metrics.json and README.md."""
    cfg = cfg or TrainConfig()
    eval_cfg = eval_cfg or EvalConfig()
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    # oneDNN's CPU RNN kernels are ~40x slower than the native ones for these shapes.
    torch.backends.mkldnn.enabled = False  # type: ignore[assignment]
    t0 = time.perf_counter()
    cols = TransactionGenerator(cfg.users, seed=cfg.seed).columns(cfg.events)
    data = featurize(cols, WINDOW)
    n_fraud = int(data.labels.sum())
    print(f"data: {len(cols)} events, {n_fraud} fraud ({time.perf_counter() - t0:.0f}s)")
    gru = train_gru(cfg, data)
    mlp = train_stateless(cfg, data)
    seq = graphs.gru_sequence_model(gru)
    files = {
        # The serving model declares its sequence form (a user's run in one call).
        GRU_FILE: graphs.declare_sequence_form(
            graphs.gru_step_model(gru), GRU_SEQ_FILE, seq.SerializeToString()
        ),
        GRU_SEQ_FILE: seq,
        STATELESS_FILE: graphs.stateless_model(mlp),
    }
    for name, model in files.items():
        onnx.save(model, str(MODELS_DIR / name))
    ev = evaluate(eval_cfg)
    seconds = time.perf_counter() - t0
    metrics = {
        "eval": ev,
        "train": {**asdict(cfg), "fraud_events": int(data.labels.sum()), "seconds": round(seconds)},
        "sha256": {name: sha256(MODELS_DIR / name) for name in files},
        "command": COMMAND,
    }
    (MODELS_DIR / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (MODELS_DIR / "README.md").write_text(_card(cfg, metrics, seconds))
    print(json.dumps(ev["models"], indent=2))
    return metrics


if __name__ == "__main__":
    main()
