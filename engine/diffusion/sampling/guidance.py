"""The guided denoiser: ComfyUI CONDITIONING lists → D(x, sigma) with classifier-free guidance.

Classifier-free guidance (Ho & Salimans 2022): D = D_uncond + cfg·(D_cond − D_uncond), applied to
the x0 estimates. Each side is a CONDITIONING list ``[[context (B, tokens, dim), {options}], ...]``;
the options understood here are ComfyUI's:

* "pooled_output" (+ "width", "height", "crop_w", ... for SDXL) → the UNet's ``y`` via the model's
  ``adm_builder``;
* "area": (h, w, y, x) in latent pixels (ConditioningSetArea stores pixels // 8), or
  ("percentage", h, w, y, x) as fractions of the latent (ConditioningSetAreaPercentage);
* "strength" (default 1); "mask" (any resolution, resized to the latent), "mask_strength",
  "set_area_to_bounds" (evaluate only the mask's bounding box);
* "start_percent"/"end_percent" (ConditioningSetTimestepRange: fractions 0..1 of the schedule);
* "control": a ControlNet-like object with ``get_control(x, sigma, context, y) -> {"input": [...],
  "middle": [...], "output": [...]}`` (residuals handed to the UNet's ``control`` argument);
* "concat_latent_image"/"concat_mask" for inpainting UNets;
* "hooks" (a HOOKS group, engine.handles.hooks): the entry is evaluated with the group's weight patches
  at their scheduled strength, in model calls of its own; "clip_start_percent"/"clip_end_percent"
  (SetClipHooks' schedule) narrow the step range; "default" (ConditioningSetDefaultCombine): the entry
  weighs what the side's other active entries leave uncovered (``hooked_conds.default_weight``).

Entries of one side are combined as ComfyUI does: each entry's prediction is weighted by its
mask × strength (areas without a mask get an 8-pixel feathered edge) and overlapping regions are
averaged by the summed weights. Compatible entries (same region shape, same extra inputs, token
lengths with a small common multiple) of both sides run in one batched UNet call.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F

from engine.diffusion.models.wrappers import call_wrapped, wrappers_of

from .diffusion_model import DiffusionModel, _to_batch
from .gligen_cond import GLIGEN_KEY, gligen_of, share_with_uncond, with_gligen_patch
from .hooked_conds import default_weight, hook_session
from .model_sampling import ModelSampling

Conditioning = Sequence[Sequence[Any]]  # [[tensor, dict], ...]
CfgFunction = Callable[[torch.Tensor, torch.Tensor, float, torch.Tensor, torch.Tensor], torch.Tensor]

_FEATHER = 8  # latent pixels of linear ramp at area edges that do not touch the image border


@dataclass
class PreparedCond:
    """One CONDITIONING entry resolved for a given latent shape."""

    context: torch.Tensor
    y: torch.Tensor | None = None
    c_concat: torch.Tensor | None = None
    area: tuple[int, int, int, int] | None = None  # (h, w, y, x), latent pixels, clamped to the latent
    mult: torch.Tensor | float = 1.0  # weight over the area: float, or (Bm, 1, h, w)
    sigma_start: float = math.inf  # active while sigma <= sigma_start
    sigma_end: float = 0.0  # ... and sigma >= sigma_end
    control: Any = None
    extra: dict[str, Any] = field(default_factory=dict)
    hooks: Any = None  # a HOOKS group: evaluated with its weight patches (see the module docstring)
    default: bool = False  # ConditioningSetDefaultCombine's entries
    # ComfyUI gives each conditioning entry a uuid for the sampling run (transformer_options["uuids"]).
    uuid: uuid.UUID = field(default_factory=uuid.uuid4)

    def active(self, sigma: float) -> bool:
        return self.sigma_end <= sigma <= self.sigma_start


def _area_from_options(opts: Mapping[str, Any], h: int, w: int) -> tuple[int, int, int, int] | None:
    area = opts.get("area")
    if area is None:
        return None
    if isinstance(area[0], str):
        if area[0] != "percentage":
            raise ValueError(
                f"conditioning 'area' {area!r}: expected (h, w, y, x) or ('percentage', h, w, y, x)"
            )
        _, ph, pw, py, px = area
        area = (max(1, round(ph * h)), max(1, round(pw * w)), round(py * h), round(px * w))
    ah, aw, ay, ax = (int(v) for v in area)
    ay, ax = min(max(ay, 0), h - 1), min(max(ax, 0), w - 1)
    # ComfyUI clamps the size so the area fits: size = min(dim - offset, size).
    return (max(1, min(h - ay, ah)), max(1, min(w - ax, aw)), ay, ax)


def _feather(length: int, offset: int, full: int) -> torch.Tensor:
    ramp = torch.ones(length)
    steps = (torch.arange(_FEATHER, dtype=torch.float32) + 1) / _FEATHER
    if offset != 0:
        n = min(_FEATHER, length)
        ramp[:n] *= steps[:n]
    if offset + length < full:
        for t in range(min(_FEATHER, length)):
            ramp[length - 1 - t] *= steps[t]
    return ramp


def _mask_bounds(mask: torch.Tensor) -> tuple[int, int, int, int] | None:
    m = mask.abs().amax(dim=0) > 0
    if not bool(m.any()):
        return None
    rows = torch.nonzero(m.any(dim=1)).flatten()
    cols = torch.nonzero(m.any(dim=0)).flatten()
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])
    return (max(8, y1 - y0 + 1), max(8, x1 - x0 + 1), y0, x0)


def prepare_conditioning(
    conds: Conditioning,
    model: DiffusionModel,
    like: torch.Tensor,
    *,
    latent_image: torch.Tensor | None = None,
    denoise_mask: torch.Tensor | None = None,
) -> list[PreparedCond]:
    """Resolve a CONDITIONING list against a latent shaped like ``like`` (B, C, h, w)."""
    b, _, h, w = like.shape
    ms = model.model_sampling
    out: list[PreparedCond] = []
    for idx, item in enumerate(conds):
        if not isinstance(item, (list, tuple)) or len(item) < 2 or not isinstance(item[1], Mapping):
            raise ValueError(
                f"CONDITIONING entry {idx} must be [tensor, dict], got {type(item).__name__}; "
                "conditioning comes from CLIPTextEncode-style nodes as a list of [tensor, dict] pairs"
            )
        context, opts = item[0], item[1]
        if not isinstance(context, torch.Tensor) or context.ndim != 3:
            raise ValueError(
                f"CONDITIONING entry {idx}: expected a (batch, tokens, dim) tensor, got {getattr(context, 'shape', context)}"
            )
        area = _area_from_options(opts, h, w)
        mult: torch.Tensor | float = float(opts.get("strength", 1.0))
        mask = opts.get("mask")
        if mask is not None:
            mask = torch.as_tensor(mask, dtype=torch.float32)
            if mask.ndim == 2:
                mask = mask.unsqueeze(0)
            if tuple(mask.shape[-2:]) != (h, w):
                mask = F.interpolate(
                    mask.reshape(-1, 1, *mask.shape[-2:]), size=(h, w), mode="bilinear", align_corners=False
                ).squeeze(1)
            if opts.get("set_area_to_bounds", False):
                bounds = _mask_bounds(mask)
                area = (8, 8, 0, 0) if bounds is None else _area_from_options({"area": bounds}, h, w)
            m = mask * float(opts.get("mask_strength", 1.0))
            if area is not None:
                ah, aw, ay, ax = area
                m = m[:, ay : ay + ah, ax : ax + aw]
            mult = m.unsqueeze(1) * mult
        elif area is not None:
            ah, aw, ay, ax = area
            ramp = _feather(ah, ay, h)[:, None] * _feather(aw, ax, w)[None, :]
            mult = ramp.reshape(1, 1, ah, aw) * mult
        if isinstance(mult, torch.Tensor):
            mult = mult.to(like.device, like.dtype)
        width = int(opts.get("width", w * 8))
        height = int(opts.get("height", h * 8))
        y = model.encode_adm(opts, width, height)
        c_concat = model.concat_cond(like, latent_image=latent_image, denoise_mask=denoise_mask, cond=opts)
        start = float(opts.get("start_percent", 0.0))
        end = float(opts.get("end_percent", 1.0))
        if "clip_start_percent" in opts:  # one range of a scheduled CLIP hook: both ranges apply
            start = max(start, float(opts["clip_start_percent"]))
            end = min(end, float(opts.get("clip_end_percent", 1.0)))
        out.append(
            PreparedCond(
                context=context,
                y=y,
                c_concat=c_concat,
                area=area,
                mult=mult,
                sigma_start=ms.percent_to_sigma(start),
                sigma_end=ms.percent_to_sigma(end),
                control=opts.get("control"),
                extra=_extra_inputs(opts),
                hooks=opts.get("hooks"),
                default="default" in opts,
            )
        )
    return out


# CLIPTextEncodeControlnet's key: the prompt an entry's ControlNets see instead of the entry's own.
CONTROL_CONTEXT_KEY = "cross_attn_controlnet"


def _extra_inputs(opts: Mapping[str, Any]) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    if (g := gligen_of(opts)) is not None:
        extra[GLIGEN_KEY] = g
    if opts.get(CONTROL_CONTEXT_KEY) is not None:
        extra[CONTROL_CONTEXT_KEY] = opts[CONTROL_CONTEXT_KEY]
    return extra


def _control_context(group: list[_Job], ctx_b: torch.Tensor, b: int) -> torch.Tensor:
    """The cross-attention context the group's ControlNets get: each entry's "cross_attn_controlnet"
    where it has one (ComfyUI's CLIPTextEncodeControlnet), else its own prompt; token counts are evened
    out by repetition as for the model's context. The model itself always sees the entries' own prompts."""
    own = [j.cond.extra.get(CONTROL_CONTEXT_KEY) for j in group]
    if all(o is None for o in own):
        return ctx_b
    contexts = [
        _to_batch((o if o is not None else j.cond.context).to(j.x.device, j.cond.context.dtype), b)
        for o, j in zip(own, group, strict=True)
    ]
    length = math.lcm(*(c.shape[1] for c in contexts))
    return torch.cat([c.repeat(1, length // c.shape[1], 1) for c in contexts])


@dataclass
class _Job:
    side: int  # 0 = cond, 1 = uncond
    cond: PreparedCond
    x: torch.Tensor


def _can_join(lengths: list[int], new: int) -> bool:
    allv = lengths + [new]
    return math.lcm(*allv) // min(allv) <= 4


def _pre_run(control: Any, model: DiffusionModel) -> None:
    """Before sampling: a control gets the model's noise schedule (``pre_run``) and, if it takes weights
    from the sampled model (Stability's SD3.5 ControlNets), the model itself (``bind_model``)."""
    pre_run = getattr(control, "pre_run", None)
    if callable(pre_run):
        pre_run(model.model_sampling)
    bind = getattr(control, "bind_model", None)
    if callable(bind):
        bind(model)


class CFGDenoiser:
    """D(x, sigma) for a positive and a negative CONDITIONING with guidance scale ``cfg``.

    cfg == 1 evaluates only the positive side (one UNet call instead of two). ``cfg_function`` can
    replace the guidance combination (cond, uncond, cfg, x, sigma) -> denoised, for plugins.
    ``max_batch`` caps how many latent items go into one UNet call (None = no cap).

    ``model_options`` are a MODEL's ComfyUI options, honoured as ComfyUI's sampling does:
    "transformer_options" (handed to the UNet, plus "cond_or_uncond" - 0 = positive, 1 = negative, one
    entry per chunk of the batch -, "uuids" and "sigmas" per call), "model_function_wrapper"
    ``(apply_model, {"input", "timestep", "c", "cond_or_uncond"}) -> x0`` around every model call,
    "sampler_pre_cfg_function" / "sampler_cfg_function" / "sampler_post_cfg_function" (lists of
    functions of an args dict, see ``_guide``) and "disable_cfg1_optimization".
    """

    def __init__(
        self,
        model: DiffusionModel,
        positive: Conditioning,
        negative: Conditioning | None,
        cfg: float,
        *,
        like: torch.Tensor,
        latent_image: torch.Tensor | None = None,
        denoise_mask: torch.Tensor | None = None,
        cfg_function: CfgFunction | None = None,
        transformer_options: dict[str, Any] | None = None,
        max_batch: int | None = None,
        model_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.model = model
        self.model_options: dict[str, Any] = dict(model_options or {})
        self._positive_src = positive
        self._negative_src = negative
        self._prepare_kw: dict[str, Any] = {
            "like": like,
            "latent_image": latent_image,
            "denoise_mask": denoise_mask,
        }
        self.cfg = float(cfg)
        self.cfg_function = cfg_function
        self.transformer_options = dict(
            self.model_options.get("transformer_options") or transformer_options or {}
        )
        self.max_batch = max_batch
        kw = {"latent_image": latent_image, "denoise_mask": denoise_mask}
        self.positive = prepare_conditioning(positive, model, like, **kw)
        cfg1 = math.isclose(self.cfg, 1.0)
        self.skip_uncond = cfg1 and not self.model_options.get("disable_cfg1_optimization", False)
        mo = self.model_options
        self._hooked = any(
            k in mo for k in ("sampler_cfg_function", "sampler_post_cfg_function", "sampler_pre_cfg_function")
        )
        self.negative: list[PreparedCond] = []
        if not self.skip_uncond:
            if not negative and not cfg1:
                raise ValueError(
                    "cfg != 1 needs a negative CONDITIONING (connect one, e.g. an empty prompt), or set cfg to 1"
                )
            self.negative = prepare_conditioning(negative or [], model, like, **kw)
            share_with_uncond(self.positive, self.negative)
        if not self.positive:
            raise ValueError("the positive CONDITIONING is empty; connect a text encoder output")
        # Controls (ControlNet/T2I) convert sigma to their own timesteps and percent ranges: give them
        # this model's noise schedule before sampling starts.
        for prepared in (*self.positive, *self.negative):
            _pre_run(prepared.control, model)
        self.model_calls = 0
        self._hook_session: Any = None

    @property
    def model_sampling(self) -> ModelSampling:
        return self.model.model_sampling

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        # ComfyUI's PREDICT_NOISE wrappers (LazyCache...) run around the guided prediction.
        if wrappers_of("predict_noise", self.transformer_options):
            args = (x, sigma, {**self.model_options, "transformer_options": self.transformer_options})
            seed = getattr(self.model, "seed", None)
            return call_wrapped("predict_noise", self.transformer_options, self._guided, self, *args, seed)  # type: ignore[no-any-return]
        return self._predict(x, sigma, need_uncond=False)[0]

    def _guided(self, x: torch.Tensor, sigma: torch.Tensor, *_: Any, **__: Any) -> torch.Tensor:
        return self._predict(x, sigma, need_uncond=False)[0]

    def with_uncond(self, x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(guided x0 estimate, unconditional x0 estimate), for the CFG++ samplers (what ComfyUI's
        post-CFG hook hands them). The negative side is evaluated even at cfg = 1, as ComfyUI does
        for these samplers (disable_cfg1_optimization); without a negative it predicts zeros."""
        if self.skip_uncond and not self.negative and self._negative_src:
            self.negative = prepare_conditioning(self._negative_src, self.model, **self._prepare_kw)
            share_with_uncond(self.positive, self.negative)
            for prepared in self.negative:
                _pre_run(prepared.control, self.model)
        den, uncond = self._predict(x, sigma, need_uncond=True)
        assert uncond is not None
        return den, uncond

    def _predict(
        self, x: torch.Tensor, sigma: torch.Tensor, *, need_uncond: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        s = float(sigma.reshape(-1)[0])
        skip = self.skip_uncond and not need_uncond
        sides = [self.positive] if skip else [self.positive, self.negative]
        jobs: list[_Job] = []
        for side, conds in enumerate(sides):
            for c in conds:
                if not c.active(s) or c.default:
                    continue
                xi = x
                if c.area is not None:
                    ah, aw, ay, ax = c.area
                    xi = x[:, :, ay : ay + ah, ax : ax + aw]
                jobs.append(_Job(side, c, xi))
            defaults = [c for c in conds if c.default and c.active(s)]
            weight = default_weight(x, [j.cond for j in jobs if j.side == side]) if defaults else None
            jobs += [_Job(side, replace(c, mult=weight), x) for c in defaults if weight is not None]
        results = self._run(jobs, x, sigma)
        preds = [
            self._combine(x, [(j, r) for j, r in zip(jobs, results, strict=True) if j.side == k])
            for k in range(len(sides))
        ]
        if skip and not self._hooked:
            return preds[0], None
        if skip:
            preds.append(torch.zeros_like(x))  # ComfyUI's skipped negative side predicts zeros
        return self._guide(x, sigma, preds, skip)

    def _guide(
        self, x: torch.Tensor, sigma: torch.Tensor, preds: list[torch.Tensor], skipped: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Combine the two sides with the model's guidance hooks, with ComfyUI's argument dicts
        (``sampling_function`` / ``cfg_function`` in its samplers.py): pre-CFG functions may rewrite
        the [cond, uncond] predictions, a cfg function returns ``x - denoised`` from noise-space
        predictions (``cond = x - cond_denoised``), post-CFG functions map the denoised estimate."""
        mo = self.model_options
        sig = sigma.reshape(-1).to(x.device)
        if sig.numel() == 1:
            sig = sig.expand(x.shape[0])
        model = self.model.base_model
        conds = [self._positive_src, None if skipped else self._negative_src]
        out = preds
        for fn in mo.get("sampler_pre_cfg_function", ()):
            args = {"conds": conds, "conds_out": out, "cond_scale": self.cfg, "timestep": sig}
            out = fn({**args, "input": x, "sigma": sig, "model": model, "model_options": mo})
        cond, uncond = out[0], out[1]
        cfg_fn = mo.get("sampler_cfg_function")
        if cfg_fn is not None:
            args = {"cond": x - cond, "uncond": x - uncond, "cond_scale": self.cfg, "timestep": sig}
            args |= {"input": x, "sigma": sig, "cond_denoised": cond, "uncond_denoised": uncond}
            args |= {"model": model, "model_options": mo, "input_cond": conds[0], "input_uncond": conds[1]}
            den = x - cfg_fn(args)
        elif self.cfg_function is not None:
            den = self.cfg_function(cond, uncond, self.cfg, x, sigma)
        else:
            den = uncond + (cond - uncond) * self.cfg
        for fn in mo.get("sampler_post_cfg_function", ()):
            args = {"denoised": den, "cond": conds[0], "uncond": conds[1], "cond_scale": self.cfg}
            args |= {"model": model, "uncond_denoised": uncond, "cond_denoised": cond, "sigma": sig}
            den = fn({**args, "model_options": mo, "input": x})
        return den, None if skipped else uncond

    # ---- batching --------------------------------------------------------------------------
    def _run(self, jobs: list[_Job], x: torch.Tensor, sigma: torch.Tensor) -> list[torch.Tensor]:
        b = x.shape[0]
        groups: list[list[int]] = []
        keys: list[tuple[Any, ...]] = []
        for i, j in enumerate(jobs):
            c = j.cond
            key = (
                tuple(j.x.shape[2:]),
                c.context.shape[2],
                None if c.y is None else tuple(c.y.shape[1:]),
                None if c.c_concat is None else c.c_concat.shape[1],
                id(c.control) if c.control is not None else None,
                id(c.extra.get(GLIGEN_KEY)),  # GLIGEN boxes: patched calls of their own
                id(c.hooks) if c.hooks is not None else None,  # each hook group in calls of its own
            )
            for g, k in zip(groups, keys, strict=True):
                lengths = [jobs[m].cond.context.shape[1] for m in g]
                fits = self.max_batch is None or (len(g) + 1) * b <= self.max_batch
                if k == key and fits and _can_join(lengths, c.context.shape[1]):
                    g.append(i)
                    break
            else:
                groups.append([i])
                keys.append(key)
        if self._hook_session is None:
            self._hook_session = hook_session(self.model.base_model, [j.cond for j in jobs])
        results: list[torch.Tensor | None] = [None] * len(jobs)
        for g in groups:
            outs = self._forward([jobs[i] for i in g], sigma, b)
            for i, o in zip(g, outs, strict=True):
                results[i] = o
        return [r for r in results if r is not None]

    def _forward(self, group: list[_Job], sigma: torch.Tensor, b: int) -> list[torch.Tensor]:
        length = math.lcm(*(j.cond.context.shape[1] for j in group))
        xs, ctxs, ys, concats = [], [], [], []
        for j in group:
            c = j.cond
            xs.append(j.x)
            ctx = _to_batch(c.context.to(j.x.device), b)
            # Repeating the token sequence leaves cross-attention unchanged (each key/value appears
            # the same number of times, so the softmax weights split evenly) - ComfyUI does the same.
            ctxs.append(ctx.repeat(1, length // ctx.shape[1], 1) if ctx.shape[1] != length else ctx)
            if c.y is not None:
                ys.append(_to_batch(c.y.to(j.x.device), b))
            if c.c_concat is not None:
                cc = c.c_concat
                if c.area is not None:
                    ah, aw, ay, ax = c.area
                    cc = cc[:, :, ay : ay + ah, ax : ax + aw]
                concats.append(_to_batch(cc, b))
        xb = torch.cat(xs) if len(xs) > 1 else xs[0]
        sb = sigma.reshape(-1)[:1].expand(xb.shape[0]).to(xb.dtype)
        ctx_b = torch.cat(ctxs) if len(ctxs) > 1 else ctxs[0]
        y_b = (torch.cat(ys) if len(ys) > 1 else ys[0]) if ys else None
        cc_b = (torch.cat(concats) if len(concats) > 1 else concats[0]) if concats else None
        if self._hook_session is not None:
            sample_sigmas = self.transformer_options.get("sample_sigmas")
            self._hook_session.apply(group[0].cond.hooks, float(sb[0]), sample_sigmas)
        control = group[0].cond.control
        ctrl = None
        if control is not None:
            ctrl = control.get_control(xb, sb, _control_context(group, ctx_b, b), y_b)
        cond_or_uncond = [j.side for j in group]
        topts = dict(self.transformer_options)
        topts["cond_or_uncond"] = cond_or_uncond[:]
        topts["uuids"] = [j.cond.uuid for j in group]
        # ComfyUI's "sigmas": the step's sigma per latent of the batch (not per chunk).
        topts["sigmas"] = sb[:b]
        topts = with_gligen_patch(topts, group[0].cond.extra.get(GLIGEN_KEY), xb)
        self.model_calls += 1
        wrapper = self.model_options.get("model_function_wrapper")
        if wrapper is None:
            out = self.model.apply(
                xb, sb, context=ctx_b, y=y_b, c_concat=cc_b, control=ctrl, transformer_options=topts
            )
        else:
            model_kw: dict[str, Any] = {"c_crossattn": ctx_b, "transformer_options": topts}
            for key, value in (("y", y_b), ("c_concat", cc_b), ("control", ctrl)):
                if value is not None:
                    model_kw[key] = value
            args = {"input": xb, "timestep": sb, "c": model_kw, "cond_or_uncond": cond_or_uncond}
            out = wrapper(self.model.apply_model, args)
        return list(out.split(b)) if len(group) > 1 else [out]

    @staticmethod
    def _combine(x: torch.Tensor, items: list[tuple[_Job, torch.Tensor]]) -> torch.Tensor:
        if not items:
            # Nothing active on this side: ComfyUI's weighted sum is then 0 everywhere.
            return torch.zeros_like(x)
        if all(j.cond.area is None and not isinstance(j.cond.mult, torch.Tensor) for j, _ in items):
            # Fast path: full-frame entries with scalar strengths -> strength-weighted mean.
            if len(items) == 1:
                return items[0][1]
            weights = [float(j.cond.mult) for j, _ in items]  # type: ignore[arg-type]
            mean = torch.zeros_like(x)
            for (_, r), w in zip(items, weights, strict=True):
                mean += r * w
            return mean / (sum(weights) + 1e-37)
        acc = torch.zeros_like(x)
        cnt = torch.full_like(x, 1e-37)
        for j, r in items:
            c = j.cond
            mult = c.mult
            if isinstance(mult, torch.Tensor) and mult.shape[0] not in (1, x.shape[0]):
                mult = _to_batch(mult, x.shape[0])
            if c.area is None:
                acc += r * mult
                cnt += mult
            else:
                ah, aw, ay, ax = c.area
                acc[:, :, ay : ay + ah, ax : ax + aw] += r * mult
                cnt[:, :, ay : ay + ah, ax : ax + aw] += mult
        return acc / cnt


def prepare_denoise_mask(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A LATENT "noise_mask" ((B, H, W) or (B, 1, H, W), any resolution, 1 = repaint) resized to the
    latent, broadcast over channels and batch."""
    m = torch.as_tensor(mask, dtype=torch.float32)
    m = m.reshape((-1, 1) + tuple(m.shape[-2:]))
    b, c, h, w = like.shape
    if tuple(m.shape[-2:]) != (h, w):
        m = F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)
    return _to_batch(m.expand(-1, c, -1, -1), b).to(like.device, like.dtype).contiguous()


class InpaintDenoiser:
    """Keeps the unmasked region on the input latent (ComfyUI's "noise_mask" / SetLatentNoiseMask).

    Before each evaluation the unmasked part of x is replaced by the input latent re-noised to the
    current sigma with ``noise`` (the sampling's initial noise; ddim: a draw from seed + 1), and the
    unmasked part of the x0 estimate is the input latent itself; so every step keeps the region where
    mask = 0 on the input's trajectory. This is all ComfyUI does (KSamplerX0Inpaint): the sampler's
    final x is not blended again, which matters for soft masks (values between 0 and 1).
    """

    def __init__(
        self,
        inner: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        model_sampling: ModelSampling,
        *,
        latent_image: torch.Tensor,
        noise: torch.Tensor,
        mask: torch.Tensor,
        sigmas: torch.Tensor | None = None,
    ) -> None:
        """``sigmas``: the run's schedule, for a MODEL's "denoise_mask_function" (ComfyUI's model
        option ``fn(sigma, mask, extra_options={"model", "sigmas"}) -> mask``, read from the inner
        guider's ``model_options``), which may change the mask at every step."""
        self.inner = inner
        self.model_sampling = model_sampling
        self.latent_image = latent_image
        self.noise = noise
        self.mask = mask
        self.keep = 1.0 - mask
        self.sigmas = sigmas
        self.mask_function = (getattr(inner, "model_options", None) or {}).get("denoise_mask_function")

    def _masks(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.mask_function is None:
            return self.mask, self.keep
        model = getattr(getattr(self.inner, "model", None), "base_model", None)
        mask = self.mask_function(sigma, self.mask, extra_options={"model": model, "sigmas": self.sigmas})
        return mask, 1.0 - mask

    def blend(self, x: torch.Tensor, sigma: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is None:
            mask, keep = self._masks(sigma)
        else:
            keep = 1.0 - mask
        renoised = self.model_sampling.noise_scaling(sigma, self.noise, self.latent_image)
        return x * mask + renoised * keep

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        mask, keep = self._masks(sigma)
        out = self.inner(self.blend(x, sigma, mask), sigma)
        return out * mask + self.latent_image * keep

    def with_uncond(self, x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Like ``__call__`` plus the inner guider's unconditional estimate, which (as in ComfyUI,
        where the post-CFG hook runs inside the masked model) is not blended with the input."""
        inner_with_uncond = getattr(self.inner, "with_uncond", None)
        mask, keep = self._masks(sigma)
        xb = self.blend(x, sigma, mask)
        if inner_with_uncond is None:
            out = self.inner(xb, sigma)
            uncond = out
        else:
            out, uncond = inner_with_uncond(xb, sigma)
        return out * mask + self.latent_image * keep, uncond
