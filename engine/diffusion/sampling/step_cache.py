"""EasyCache and LazyCache: skip model evaluations whose output is predicted to barely change.

Both keep, per run, the subsampled previous input and output of the model and the ratio k between how
much the output and the input moved at the last evaluated step ("relative transformation rate"). At a
new step the predicted relative output change is k * |Δinput| / |previous output|; these are summed
over consecutive skipped steps and, while the sum stays under ``reuse_threshold``, the model is not
called: its output is the new input plus the cached (output - input) of the last evaluated step.
Caching is active for sigmas between the ``start_percent`` and ``end_percent`` points of the schedule;
after ``end_percent`` every step runs the model (facts from ComfyUI's comfy_extras/nodes_easycache.py).

EasyCache wraps the network call ("diffusion_model" wrappers: scaled input -> raw output), with one
cached difference per conditioning (``transformer_options["uuids"]``); the first conditioning decides
for the whole step. LazyCache wraps the guided prediction ("predict_noise" wrappers: noisy latent ->
guided x0). The state lives in the MODEL clone's ``transformer_options["easycache"]``; a run is
recognised by its ``sample_sigmas`` tensor or by sigma rising again, so re-running the same MODEL
starts from a clean state.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

log = logging.getLogger(__name__)

OPTIONS_KEY = "easycache"
SUBSAMPLE = 8  # ComfyUI's subsample factor: every 8th latent pixel in both spatial directions


def _mean_abs(t: torch.Tensor) -> torch.Tensor:
    return t.flatten().abs().mean()


def _leading(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """x cut to ``like``'s channels: the network's input can carry concatenated conditioning channels
    (inpainting / IP2P / depth models) after the latent; the output only matches the latent part."""
    return x[:, : like.shape[1]] if x.ndim > 1 and x.shape[1] != like.shape[1] else x


class StepCache:
    """The change predictor and cached differences of one sampling run (see the module docstring)."""

    def __init__(
        self, name: str, reuse_threshold: float, start_sigma: float, end_sigma: float, verbose: bool = False
    ) -> None:
        self.name = name
        self.reuse_threshold = float(reuse_threshold)
        self.start_sigma = float(start_sigma)
        self.end_sigma = float(end_sigma)
        self.verbose = bool(verbose)
        self._run: Any = None
        self.reset()

    def reset(self) -> None:
        self.rate: torch.Tensor | None = None  # |Δoutput| / |Δinput| at the last evaluated step
        self.cumulative = 0.0
        self.x_prev: torch.Tensor | None = None
        self.out_prev: torch.Tensor | None = None
        self.out_norm: torch.Tensor | None = None
        self.diffs: dict[Any, torch.Tensor] = {}
        self.first_uuid: Any = None
        self.skip_step = False
        self.sigma: float | None = None
        self.metadata: Any = None
        self.skipped = 0
        self.evaluated = 0
        self.owner: Any = None  # LazyCache: the guided denoiser whose predictions the state follows

    # ---- run and step bookkeeping -------------------------------------------------------------
    def begin(self, transformer_options: dict[str, Any], sigma: float) -> None:
        """Start a clean state on a new run, and a new step when sigma moves. A run is told by its
        schedule tensor, or by sigma going up (the same SIGMAS value sampled again)."""
        run = transformer_options.get("sample_sigmas")
        if run is not self._run or (self.sigma is not None and sigma > self.sigma):
            self.summarise()
            self._run = run  # keeping the tensor also keeps its identity from being reused
            self.reset()
            log.info(
                "%s enabled - threshold: %s, sigma range: %.4g..%.4g",
                self.name,
                self.reuse_threshold,
                self.start_sigma,
                self.end_sigma,
            )
        if sigma != self.sigma:
            self.sigma = sigma
            self.skip_step = False

    def summarise(self) -> None:
        if self._run is None or self.skipped + self.evaluated == 0:
            return
        total = self.skipped + self.evaluated
        speedup = total / self.evaluated if self.evaluated else 1.0
        log.info("%s - skipped %d/%d model calls (%.2fx speedup).", self.name, self.skipped, total, speedup)

    def active(self, sigma: float) -> bool | None:
        """None past the end of the range (always evaluate, keep nothing new as reference), else whether
        skipping may happen at this sigma (False before the range starts)."""
        if not sigma > self.end_sigma:
            return None
        return sigma <= self.start_sigma

    def same_layout(self, x: torch.Tensor) -> bool:
        meta = (x.device, x.dtype, tuple(x.shape[1:]))
        if self.metadata is None or self.metadata == meta:
            self.metadata = meta
            return True
        log.warning("%s - tensor shape, dtype or device changed, resetting the cache", self.name)
        self.reset()
        self.metadata = meta
        return False

    # ---- the predictor ----------------------------------------------------------------------------
    @staticmethod
    def subsample(x: torch.Tensor) -> torch.Tensor:
        return x[..., ::SUBSAMPLE, ::SUBSAMPLE] if x.ndim >= 4 else x

    def input_change(self, x_sub: torch.Tensor) -> torch.Tensor | None:
        if self.x_prev is None or self.x_prev.shape != x_sub.shape:
            return None
        return _mean_abs(x_sub - self.x_prev)

    def decide_skip(self, change: torch.Tensor | None) -> bool:
        """Add the predicted relative output change; True when the running sum stays under the threshold."""
        if change is None or self.out_norm is None or self.rate is None:
            return False
        self.cumulative += float(self.rate * change / self.out_norm)
        if self.cumulative < self.reuse_threshold:
            if self.verbose:
                log.info("%s [verbose] - skipping step; cumulative change %.4g", self.name, self.cumulative)
            return True
        if self.verbose:
            log.info("%s [verbose] - NOT skipping step; cumulative change %.4g", self.name, self.cumulative)
        self.cumulative = 0.0
        return False

    def observe(self, x_sub: torch.Tensor, out: torch.Tensor, change: torch.Tensor | None) -> None:
        """Remember an evaluated step's input and output as the next step's reference."""
        out_sub = self.subsample(out)
        if self.out_prev is not None and change is not None and self.out_prev.shape == out_sub.shape:
            out_change = _mean_abs(out_sub - self.out_prev)
            self.rate = out_change / change
            if self.verbose and self.out_norm is not None:
                log.info(
                    "%s [verbose] - output change rate %.4g", self.name, float(out_change / self.out_norm)
                )
        self.x_prev = x_sub.clone()
        self.out_prev = out_sub.clone()
        self.out_norm = _mean_abs(out)


def _chunks(t: torch.Tensor, uuids: list[Any]) -> list[torch.Tensor]:
    return list(t.chunk(len(uuids))) if len(uuids) > 1 else [t]


def easycache_wrapper(executor: Any, *args: Any, **kwargs: Any) -> Any:
    """A "diffusion_model" wrapper: args are the network's (x, timesteps, context, y, control, options)."""
    x: torch.Tensor = args[0]
    topts = args[-1] if isinstance(args[-1], dict) else kwargs.get("transformer_options") or {}
    cache: StepCache | None = topts.get(OPTIONS_KEY)
    sigmas, uuids = topts.get("sigmas"), topts.get("uuids")
    if cache is None or sigmas is None or not uuids:
        return executor(*args, **kwargs)
    sigma = float(torch.as_tensor(sigmas).reshape(-1)[0])
    cache.begin(topts, sigma)
    active = cache.active(sigma)
    if active is None:
        cache.evaluated += 1
        return executor(*args, **kwargs)
    change = None
    leads = cache.first_uuid in uuids
    if active and cache.same_layout(x):
        if cache.first_uuid is None:
            cache.first_uuid, leads = uuids[0], True
        if leads and not cache.skip_step:
            change = _change(cache, x, uuids)
            # The other conditionings' calls of this step (when they come separately) follow this decision.
            cache.skip_step = cache.decide_skip(change)
        if cache.skip_step:
            cached = _from_cache(cache, x, uuids)
            if cached is not None:
                return cached
    out: torch.Tensor = executor(*args, **kwargs)
    cache.evaluated += 1
    diff = out - _leading(x, out)
    cache.diffs.update(zip(uuids, _chunks(diff, uuids), strict=True))
    if leads:
        i = uuids.index(cache.first_uuid)
        cache.observe(cache.subsample(_chunks(x, uuids)[i]), _chunks(out, uuids)[i], change)
    return out


def _change(cache: StepCache, x: torch.Tensor, uuids: list[Any]) -> torch.Tensor | None:
    return cache.input_change(cache.subsample(_chunks(x, uuids)[uuids.index(cache.first_uuid)]))


def _from_cache(cache: StepCache, x: torch.Tensor, uuids: list[Any]) -> torch.Tensor | None:
    """x plus each conditioning's cached difference; None (evaluate) when one has none yet."""
    parts = []
    for u, xc in zip(uuids, _chunks(x, uuids), strict=True):
        diff = cache.diffs.get(u)
        if diff is None:
            return None
        xc = _leading(xc, diff)
        if xc.shape != diff.shape:
            return None
        parts.append(xc + diff.to(xc.device))
    if cache.first_uuid in uuids:
        cache.skipped += 1
    return torch.cat(parts) if len(parts) > 1 else parts[0]


def lazycache_wrapper(executor: Any, *args: Any, **kwargs: Any) -> Any:
    """A "predict_noise" wrapper: args are (x, sigma, model_options, seed); returns the guided x0."""
    x: torch.Tensor = args[0]
    cache: StepCache | None = (args[2].get("transformer_options") or {}).get(OPTIONS_KEY)
    if cache is None:
        return executor(*args, **kwargs)
    sigma = float(torch.as_tensor(args[1]).reshape(-1)[0])
    cache.begin(args[2].get("transformer_options") or {}, sigma)
    owner = getattr(executor, "class_obj", None)
    if cache.owner is None:
        cache.owner = owner
    active = cache.active(sigma)
    if active is None or owner is not cache.owner:
        # Another guided denoiser of the same run (DualCFGGuider's parts): its own prediction, uncached.
        cache.evaluated += 1
        return executor(*args, **kwargs)
    change = None
    if active and cache.same_layout(x):
        change = cache.input_change(cache.subsample(x))
        diff = cache.diffs.get(None)
        if diff is not None and diff.shape == x.shape and cache.decide_skip(change):
            cache.skipped += 1
            return x + diff.to(x.device)
    out: torch.Tensor = executor(*args, **kwargs)
    cache.evaluated += 1
    cache.diffs[None] = out - x
    cache.observe(cache.subsample(x), out, change)
    return out
