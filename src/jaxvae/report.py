"""`jaxvae report RUN`: the run as one self-contained HTML page, the chapter's page of pictures.

The page carries everything inline (PNG images as base64 data URIs, CSS in a <style> block), runs no
script and makes no request: a Content-Security-Policy of `default-src 'none'` enforces that in the
browser, so it reads the same from a laptop's disk, an e-mail or a CI artefact. Every user string
(paths, config values, evaluation keys) goes through html.escape.

The pictures are recomputed from the checkpoint `jaxvae.load` picks (the best by validation loss)
by pictures.pictures, the function training and the picture commands call, with the run's key;
this module only lays them out. So the page shows what that checkpoint gives: the summary, the
five curves, the data, reconstructions with their MSE, prior samples at three temperatures (beside a
fitted sampler's, RUN/samplers/), pixel/lerp/slerp interpolations, the KL per latent dimension,
traversals of the most active dimensions, `evaluation*.json` where `jaxvae evaluate` wrote one
(with the disentanglement scores and a mutual-information heatmap where it has them), and last the
config (collapsed). A run that is partial (still training, interrupted before a checkpoint, data
moved) gets a page of what exists and one line for each thing that is missing. Writing `--out` is the only write.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import html
import io
import json
import math
import os
from pathlib import Path

import numpy as np

from jaxvae import run as run_lib
from jaxvae.atomic import write_text
from jaxvae.config import TRAVERSAL_TOP, Config
from jaxvae.outputs import HTML_GENERATOR, output_file

REPORT = run_lib.REPORT
TEMPERATURES = (0.5, 0.8, 1.0)
PER_ROW = 10  # images per row of every grid
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

# How the summary's keys read on the page; keys not listed are shown as they are.
SUMMARY_LABELS = {
    "steps": "steps", "wall_time_s": "wall time (s)", "compile_s": "compile time (s)",
    "images_per_s": "images/s (median)", "reconstruction_mse": "held-out reconstruction MSE ([0,1] pixels)",
    "loss": "final train loss", "val_loss": "final valid loss", "reconstruction_loss": "final reconstruction loss",
    "kl_loss": "final KL (nats)", "x_std": "final mean x sigma", "z_std": "final mean z sigma",
}

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; }
.meta { color: #666; } .missing { background: #fff4e0; border-left: 4px solid #e69500; padding: 0.5em 1em; }
table { border-collapse: collapse; margin: 0.5em 0; } td, th { border: 1px solid #ddd; padding: 0.2em 0.6em; }
th { background: #f4f4f4; text-align: left; } td.num { font-family: ui-monospace, monospace; text-align: right; }
td.str { font-family: ui-monospace, monospace; } img { max-width: 100%; height: auto; display: block; }
table.grid th { background: none; border: none; text-align: right; font-weight: normal; white-space: pre; }
table.grid td { border: none; padding: 0; }
"""


@dataclasses.dataclass
class Page:
    """The page as it is built: sections of HTML, and a line for each thing that is missing."""

    sections: list[str] = dataclasses.field(default_factory=list)
    missing: list[str] = dataclasses.field(default_factory=list)

    def add(self, title: str, *parts: str) -> None:
        self.sections.append(f"<section><h2>{html.escape(title)}</h2>\n" + "\n".join(parts) + "\n</section>")


# --- small HTML pieces ------------------------------------------------------------------------------

def _p(text: str) -> str:
    return f"<p>{html.escape(text)}</p>"


def _value(v) -> tuple[str, str]:
    """(css class, escaped text) of one table cell."""
    if isinstance(v, bool) or v is None:
        return "str", html.escape(str(v))
    if isinstance(v, int):
        return "num", f"{v:,}"
    if isinstance(v, float):
        return "num", html.escape(f"{v:.6g}" if math.isfinite(v) else str(v))
    if isinstance(v, str):
        return "str", html.escape(v)
    return "str", html.escape(json.dumps(v))


def _table(rows: list[tuple[str, object]], header: tuple[str, str] = ("", "")) -> str:
    head = f"<tr><th>{html.escape(header[0])}</th><th>{html.escape(header[1])}</th></tr>" if any(header) else ""
    body = []
    for key, v in rows:
        cls, text = _value(v)
        body.append(f'<tr><th>{html.escape(str(key))}</th><td class="{cls}">{text}</td></tr>')
    return "<table>" + head + "".join(body) + "</table>"


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def _figure(draw, *args, **kwargs) -> bytes:
    """Call a jaxvae.plots function with an in-memory file in place of its path; return the PNG."""
    buf = io.BytesIO()
    draw(*args, buf, **kwargs)
    return buf.getvalue()


def _flatten(obj, prefix: str = "") -> list[tuple[str, object]]:
    """Nested JSON -> [(dotted key, leaf)]: evaluation files are shown whatever their exact keys."""
    if isinstance(obj, dict):
        rows = []
        for k, v in obj.items():
            rows += _flatten(v, f"{prefix}.{k}" if prefix else str(k))
        return rows
    if isinstance(obj, list) and len(obj) > 8:
        return [(prefix or "value", f"[{len(obj)} values] " + json.dumps(obj[:8])[:-1] + ", ...]")]
    return [(prefix or "value", obj)]


# --- the sections -------------------------------------------------------------------------------------

def _summary(page: Page, path: Path, config: Config, records: list[dict]) -> None:
    summary = _read_json(page, path / run_lib.SUMMARY)
    parts = []
    if isinstance(summary, dict):
        rows = [(SUMMARY_LABELS.get(k, k), summary[k]) for k in SUMMARY_LABELS if k in summary]
        rows += [(k, v) for k, v in sorted(summary.items()) if k not in SUMMARY_LABELS]
        parts.append(_table(rows))
    else:
        page.missing.append(f"no {run_lib.SUMMARY}: training has not finished (or was interrupted)")
        if records:  # the latest logged metrics are the summary so far
            last = records[-1]
            parts += [_p(f"last logged step {last.get('step', '?')} of {config.steps}:"),
                      _table([(k, v) for k, v in sorted(last.items()) if k != "step"])]
    page.add("Run summary", *parts or [_p("nothing recorded yet")])


def _config(page: Page, config: Config) -> None:
    # last on the page and collapsed: forty rows of settings are reference, not the story
    page.add("Config (resolved, from config.json)",
             f"<details><summary>{len(config.to_dict())} fields</summary>"
             + _table(list(config.to_dict().items()), ("field", "value")) + "</details>")


def _curves(page: Page, records: list[dict]) -> None:
    from jaxvae import plots

    if not records:
        page.missing.append(f"no {run_lib.METRICS} records yet: no loss curves")
        return
    logged = len(records)
    valid = sum("val_loss" in r for r in records)
    page.add("Loss curves", _p(f"{logged} logged steps ({valid} with a validation loss), from {run_lib.METRICS}."),
             _img(_figure(plots.curves, records), "five loss curves: total, reconstruction, KL, x sigma, z sigma"))


def _load_model(page: Page, path: Path):
    """The run's latest checkpoint as a TrainedVAE, or None with a line saying why."""
    from jaxvae.api import load

    ckpt_dir = path / run_lib.CHECKPOINTS
    if not ckpt_dir.is_dir() or not any(ckpt_dir.iterdir()):
        reason = f"no checkpoint yet ({run_lib.CHECKPOINTS}/ is empty)"
    else:
        try:
            vae = load(path)
            return vae, vae.checkpoint_step
        except run_lib.RunError as e:  # no complete checkpoint yet: the first save is still being written
            reason = str(e)
        except Exception as e:  # a damaged checkpoint must not cost the rest of the page
            reason = f"the checkpoint could not be read ({type(e).__name__}: {e})"
    page.missing.append(f"{reason}: no reconstructions, samples, interpolations, KL per dimension or traversals")
    return None, None


def _checkpoint_step(ckpt_dir: Path) -> int | None:
    """The newest finished checkpoint's step (Orbax names them by step; unfinished ones carry a suffix)."""
    return max((int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit()), default=None)


def _load_data(page: Page, config: Config):
    from jaxvae import data as data_lib

    try:
        return data_lib.load_dataset(config)
    except (OSError, ValueError) as e:  # ConfigError is a ValueError: a moved or unknown data source
        page.missing.append(f"the data {config.data!r} could not be loaded ({e}): "
                            "no dataset grid, reconstructions, interpolations, KL per dimension or traversals")
        return None


def _data(page: Page, dataset) -> None:
    from jaxvae import data as data_lib

    train = data_lib.to_model_range(dataset.train[:2 * PER_ROW])
    page.add("The data", _p(f"{len(dataset.train)} training and {len(dataset.val)} held-out images "
                            f"from {dataset.source}."),
             _grid([("train", train[:PER_ROW]), ("", train[PER_ROW:])], "training images"))


def _held_out(page: Page, dataset) -> np.ndarray:
    """The first latents.HELD_OUT held-out images in [-1,1], (N,S,S,C); none without data."""
    from jaxvae import data as data_lib
    from jaxvae.latents import HELD_OUT

    if dataset is None:
        return np.zeros((0,))
    if len(dataset.val) < 2:
        page.missing.append(f"{len(dataset.val)} held-out images: no interpolation"
                            + ("" if len(dataset.val) else ", reconstructions, KL per dimension or traversals"))
    return data_lib.to_model_range(dataset.val[:HELD_OUT])


def _grid(rows: list[tuple[str, np.ndarray]], alt: str) -> str:
    """Labelled rows of images (each (N,S,S,C) in [-1,1]) as a table: labels in HTML, pixels as PNG."""
    from jaxvae import plots

    body = "".join(f'<tr><th>{html.escape(label)}</th><td>{_img(plots.png(plots.tile(images)), f"{alt}: {label}")}'
                   "</td></tr>" for label, images in rows)
    return f'<table class="grid">{body}</table>'


def _wanted(config: Config, held_out: int):
    """The report's pictures (pictures.Wanted) from `held_out` images: PER_ROW of each, and the same 20 prior
    draws as samples.png (the first PER_ROW shown) at each of TEMPERATURES."""
    from jaxvae import pictures

    return pictures.Wanted(reconstructions=PER_ROW if held_out else 0, samples=pictures.RUN.samples,
                           temperatures=TEMPERATURES, steps=PER_ROW,
                           interpolations=("pixel", "lerp", "slerp") if held_out >= 2 else (),
                           traversals=min(TRAVERSAL_TOP, config.z_dim) if held_out else 0)


def _pictures(page: Page, config: Config, model, step: int, val: np.ndarray) -> np.ndarray:
    """Every section that needs the trained model; val (N,S,S,C) in [-1,1] are held-out images,
    maybe none. pictures.pictures draws them (one encoder and one decoder pass); this lays them out.
    Returns the prior samples at T = 1, (PER_ROW,S,S,C)."""
    from jaxvae import latents, pictures

    out = pictures.pictures(model, val, pictures.run_key(config), _wanted(config, len(val)))
    samples = dict(zip(TEMPERATURES, out["samples"][:, :PER_ROW], strict=True))
    if len(val):
        page.add("Reconstructions",
                 _p(f"Held-out images over the decoder mean of their posterior mean, checkpoint step {step}. "
                    f"MSE of these {len(out['reconstructions'])} in [0,1] pixels: {out['reconstruction_mse']:.5f}."),
                 _grid([("original", out["originals"]), ("reconstruction", out["reconstructions"])],
                       "reconstructions"))
    vamp = config.prior == "vamp"
    page.add("Prior samples", _p("Decoder means of z ~ N(0, T^2 I). Each column scales the same draw, so the rows "
                                 "show what the temperature does." if not vamp else
                                 "Decoder means of z from the VampPrior: a uniformly drawn pseudo-input's posterior, "
                                 "its std scaled by T."),
             _grid([(f"T = {t}", samples[t]) for t in TEMPERATURES], "prior samples"))
    if len(val) >= 2:
        page.add("Interpolation", _p("Between held-out images 0 and 1: a pixel cross-fade, then the decoded straight "
                                     "line (lerp) and great circle (slerp) between their posterior means."),
                 _grid([("pixel space", out["pixel"]), ("latent lerp", out["lerp"]), ("latent slerp", out["slerp"])],
                       "interpolation"))
    if len(val):
        stats = latents.LatentStats(out["kl_per_dim"], out["mean_variance"], min(len(val), latents.HELD_OUT))
        _latent_sections(page, config, stats, out["traversal_dims"], out["traversal_values"], out["traversals"])
    return samples[1.0]


def _latent_sections(page: Page, config: Config, stats, top: np.ndarray, values: np.ndarray,
                     traversals: np.ndarray) -> None:
    """The KL per dimension (the chart) and the traversals (D,T,S,S,C) of the `top` dims."""
    from jaxvae import latents, plots

    kl_to = "p(z_d), the prior's marginal (Monte Carlo)" if config.prior == "vamp" else "N(0,1)"
    page.add("KL per latent dimension",
             _p(f"Mean KL(q(z_d|x) || {kl_to}) over {stats.images} held-out images: total {float(stats.kl.sum()):.3f} "
                f"nats; {stats.active} of {config.z_dim} dimensions active (variance of the posterior mean > "
                f"{latents.ACTIVE_VARIANCE}), in blue. The {len(top)} most active, traversed below, in orange."),
             _img(_figure(plots.kl_per_dim, stats.kl, highlight=top, mean_variance=stats.mean_variance,
                          threshold=latents.ACTIVE_VARIANCE), "KL per latent dimension"))
    page.add("Latent traversals",
             _p(f"The {len(top)} dimensions with the largest mean KL, largest first. Each row sweeps one over "
                f"z_d = {', '.join(f'{v:+g}' for v in values)} (prior sigmas), left to right, with every other "
                "dimension held at held-out image 0's posterior mean. `jaxvae traverse RUN --dims ...` draws "
                "any others."),
             _grid([(f"z[{d}]  KL {stats.kl[d]:.2f}", row) for d, row in zip(top, traversals, strict=True)],
                   "latent traversal"))


def _sampler(page: Page, path: Path, vae, prior: np.ndarray) -> None:
    """The prior's samples (PER_ROW at T = 1, as the Prior samples section shows them) beside the samples of a
    sampler fitted by `jaxvae fit-sampler` (RUN/samplers/), drawn with the run's seed."""
    from jaxvae import samplers

    for kind in samplers.KINDS:
        if not samplers.sampler_path(path, kind).is_file():
            continue
        try:
            fitted = samplers.load_sampler(path, kind)
            drawn = vae.sample(PER_ROW, seed=vae.config.seed, sampler=kind)
        except Exception as e:  # a damaged sampler file must not cost the rest of the page
            page.missing.append(f"the {kind} sampler could not be read ({type(e).__name__}: {e})")
            continue
        page.add(f"Samples: prior and {kind} sampler",
                 _p(f"The prior's samples over those of a {fitted.summary()}. Held-out latent log-likelihood: "
                    f"{fitted.heldout_loglik_sampler:.2f} nats under the sampler, {fitted.heldout_loglik_prior:.2f} "
                    "under the prior."),
                 _grid([("prior", prior), (f"{kind} sampler", drawn)], f"prior and {kind} samples"))


def _evaluation(page: Page, path: Path) -> None:
    files = sorted(path.glob("evaluation*.json"))
    if not files:  # not a defect of the run, so a hint in place rather than a line in the "missing" banner
        page.add("Evaluation", _p("No evaluation yet: `jaxvae evaluate RUN --out RUN/evaluation.json` writes one "
                                  "(IWAE bound, bits/dim, active units), and the report then shows it here."))
        return
    parts = []
    for file in files:
        result = _read_json(page, file)
        if result is not None:
            parts += [_p(f"{file.name}:"), _table(_flatten(result), ("metric", "value"))]
            _disentanglement(page, file.name, result)
    if parts:
        page.add("Evaluation", *parts)


DISENTANGLEMENT_LABELS = {
    "betavae_score": "beta-VAE score (Higgins et al. 2017)", "factorvae_score": "FactorVAE score (Kim & Mnih 2018)",
    "mig": "MIG (Chen et al. 2018)", "sap": "SAP (Kumar et al. 2018)",
    "dci_disentanglement": "DCI disentanglement (Eastwood & Williams 2018)", "dci_completeness": "DCI completeness",
    "dci_informativeness": "DCI informativeness (test accuracy)",
}


def _disentanglement(page: Page, name: str, result) -> None:
    """The scores of `jaxvae evaluate --disentanglement` and the mutual-information heatmap, when `result` has them."""
    from jaxvae import plots

    detail = result.get("disentanglement") if isinstance(result, dict) else None
    if not isinstance(detail, dict) or not all(k in result for k in DISENTANGLEMENT_LABELS):
        return
    try:
        settings = detail["settings"]
        names = [str(n) for n in detail["factor_names"]]
        mi, entropy = np.asarray(detail["mutual_information"], float), np.asarray(detail["factor_entropy"], float)
        picture = _img(_figure(plots.mutual_information_heatmap, mi, entropy, names),
                       "mutual information between latent dimensions and factors")
        chance = 1.0 / len(names)
        text = (f"From {name}: the posterior means of {settings['num_train']} + {settings['num_test']} draws of "
                f"the factors {', '.join(names)} (beta-VAE and FactorVAE points of {settings['batch_size']} "
                f"observations). Chance for the beta-VAE and FactorVAE scores is about {chance:.2f}; for the "
                "others 0, except DCI informativeness, an accuracy. A disentangled code has one bright cell per "
                "factor below, each in its own column.")
    except (KeyError, TypeError, ValueError) as e:
        page.missing.append(f"{name}: its disentanglement results could not be read ({type(e).__name__}: {e})")
        return
    page.add("Disentanglement", _p(text),
             _table([(label, result[key]) for key, label in DISENTANGLEMENT_LABELS.items()], ("metric", "score")),
             picture)


def _read_json(page: Page, file: Path):
    if not file.is_file():
        return None
    try:
        return json.loads(file.read_text())
    except (OSError, ValueError) as e:
        page.missing.append(f"{file.name} could not be read ({e})")
        return None


# --- the page --------------------------------------------------------------------------------------------

def build_report(run: str | os.PathLike) -> str:
    """The HTML text of the report of `run` (RunError if it is not a run). Reads only."""
    path, config = run_lib.open_run(run)
    page = Page()
    records = run_lib.read_metrics(path)
    _summary(page, path, config, records)
    _curves(page, records)
    if config.data_dim:  # vector data: the curves, summary and evaluation are the whole story
        page.missing.append(f"vector data (D = {config.data_dim}): no image grids, reconstructions, samples, "
                            "interpolations or traversals")
        step = _checkpoint_step(path / run_lib.CHECKPOINTS)
    else:
        dataset = _load_data(page, config)
        if dataset is not None:
            _data(page, dataset)
        vae, step = _load_model(page, path)
        if vae is not None:
            prior = _pictures(page, config, vae.model, step, _held_out(page, dataset))
            _sampler(page, path, vae, prior)
    _evaluation(page, path)
    _config(page, config)

    meta = _read_json(page, path / run_lib.META) or {}
    when = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    head = (f"<h1>jaxvae run {html.escape(path.name or str(path))}</h1>\n"
            f'<p class="meta">{html.escape(str(path.absolute()))} &middot; written by jaxvae '
            f"{html.escape(str(meta.get('jaxvae_version', '?')))} &middot; report generated {html.escape(when)}"
            + (f" &middot; checkpoint step {step}" if step is not None else "") + "</p>")
    missing = ""
    if page.missing:
        items = "".join(f"<li>{html.escape(m)}</li>" for m in page.missing)
        missing = f'<div class="missing"><strong>Missing from this run:</strong><ul>{items}</ul></div>'
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n{HTML_GENERATOR}\n'
            f"<title>jaxvae report: {html.escape(path.name or str(path))}</title>\n<style>{STYLE}</style></head>\n"
            f"<body>\n{head}\n{missing}\n" + "\n".join(page.sections) + "\n</body></html>\n")


def write_report(run: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Write the report of `run` to `out` (default RUN/report.html) atomically; return its path."""
    out = Path(run) / REPORT if out is None else output_file(out, REPORT, into_run="yes", suffixes=(".html", ".htm"))
    # a path that is not UTF-8 (undecodable bytes kept as surrogates by os.fsdecode) shows as U+FFFD
    text = build_report(run).encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return write_text(out, text)
