"""The sampling contract shared by every family, and what the three LightningModules share.

Every family implements ``_sample_batch(n, generator)``; callers use ``sample(n, generator=None)``
which returns ``n`` images shaped like the data, float32 in [-1, 1], on the module's device. The
evaluation callback, ``genbench-eval`` and the benchmark rely on nothing else.

Class conditioning is part of the same contract. A family that can be conditioned takes
``conditional`` and ``num_classes`` (``model.conditional=true``; the class count comes from
``data.num_classes``) and calls :meth:`GenerativeModel.enable_conditioning` in its constructor.
``sample(n, labels=...)`` then asks for classes: a conditional model's ``_sample_batch`` receives
``labels=`` (a long tensor of the chunk's classes on the module's device); an unconditional
model's never does, and asking it for a class is an error. A conditional model asked for no class
draws the classes in turn (0, 1, ..., K-1, 0, ...), so its unconditional metrics score a
class-balanced sample.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch

from genbench import GenbenchError, __version__
from genbench.reproducibility import randn
from genbench.stopping import check_stop

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., Any] | None

log = logging.getLogger("genbench.models")


def channels_last_option(value: bool | str) -> bool | str:
    """``model.channels_last``: true, false, or ``auto`` (on where it was measured to win: on a
    CPU, where it trained all three built-in families 1.07-1.21x faster, and for a diffusion
    model's UNet on a GPU, 1.22x on an H100; off on a GPU for the families whose generator or
    decoder is built of transposed convolutions, 1.05x and 0.76x there; see docs/performance.md
    for the per-family figures)."""
    if isinstance(value, bool) or value == "auto":
        return value
    raise GenbenchError(f"model.channels_last={value!r}: use true, false or auto.")


def compile_options(value: bool | dict[str, Any] | None) -> dict[str, Any] | None:
    """``model.compile``: false/null (eager), true (``torch.compile`` defaults) or a dict of
    ``torch.compile`` keyword arguments (``{backend: aot_eager}``, ``{mode: max-autotune}``...).
    Returns the keyword arguments, or None for eager."""
    if value is None or value is False:
        return None
    if value is True:
        return {}
    if hasattr(value, "items"):
        return dict(value.items())
    raise GenbenchError(
        f"model.compile={value!r}: use true, false, or a dict of torch.compile arguments (e.g. {{mode: default}})."
    )


def _channels_last_inputs(module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(
        a.contiguous(memory_format=torch.channels_last) if isinstance(a, torch.Tensor) and a.ndim == 4 else a
        for a in args
    )


def transposed_conv_networks(networks: dict[str, torch.nn.Module]) -> list[str]:
    """Names of the networks that contain a transposed convolution (e.g. a convolutional
    generator or decoder): the ones ``model.compile`` leaves eager on a GPU."""
    kinds = (torch.nn.ConvTranspose1d, torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d)
    return [name for name, net in networks.items() if any(isinstance(m, kinds) for m in net.modules())]


class GenerativeModel(pl.LightningModule):
    family: str = "base"
    #: the validation metric that picks the "best" checkpoint (None: only last.ckpt is meaningful)
    default_monitor: str | None = "val/loss"
    #: DDP must look for parameters a backward pass did not reach (a family with two optimizers:
    #: its discriminator step leaves the generator out)
    ddp_find_unused_parameters: bool = False
    #: whether ``sample()`` accepts ``sampler=`` (a family with samplers, e.g. a diffusion model)
    supports_samplers: bool = False
    #: child modules left in the default memory format on a GPU whatever ``model.channels_last``
    #: says (e.g. a transposed-convolution generator: channels_last + torch.compile crashed
    #: Inductor there)
    channels_last_exempt_on_gpu: tuple[str, ...] = ()
    #: what ``model.channels_last: auto`` means on a GPU (on a CPU it is always on)
    channels_last_auto_on_gpu: bool = False

    def __init__(
        self,
        channels: int,
        image_size: int,
        sample_batch_size: int = 256,
        channels_last: bool | str = False,
        compile: bool | dict[str, Any] | None = False,  # shadows the builtin: it is the config key (model.compile)
    ) -> None:
        super().__init__()
        self.channels = channels
        self.image_size = image_size
        self.sample_batch_size = sample_batch_size
        #: speed options (applied by ``configure_model`` when a Trainer starts; see docs/performance.md)
        self.channels_last = channels_last_option(channels_last)
        self.compile_kwargs = compile_options(compile)
        self._speed_applied = False
        self._step_clock: list[float] = []
        #: seconds the first training step spent compiling (model.compile), once measured
        self.compile_seconds: float | None = None
        #: the number of classes a conditional model is asked for (None: unconditional); see
        #: enable_conditioning
        self.num_classes: int | None = None
        #: the resolved Hydra config (model + data) saved in checkpoints, so that a checkpoint
        #: alone rebuilds its model (see genbench.models.load_model_from_checkpoint)
        self.genbench_config: dict[str, Any] | None = None

    @classmethod
    def load_from_checkpoint(  # type: ignore[override]
        cls,
        checkpoint_path: Any,
        map_location: Any = None,
        hparams_file: Any = None,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> GenerativeModel:
        """Lightning's classmethod through genbench's loader (:func:`genbench.models.load_model_from_checkpoint`).

        Lightning rebuilds a module from its saved hyperparameters, but a family's networks, noise
        schedule, sampler and optimiser are constructor arguments built from the config genbench-train
        stores in the checkpoint, so they are rebuilt from that config instead (weights_only loading,
        EMA weights included). A checkpoint of another family is refused in one line."""
        from genbench.models import load_model_from_checkpoint

        if hparams_file is not None or kwargs or strict is False:
            raise GenbenchError(
                f"{cls.__name__}.load_from_checkpoint rebuilds the model from the config stored in the checkpoint: "
                "it takes no hparams_file, strict=False or constructor arguments (use genbench.api.load, then change it)."
            )
        device = map_location if isinstance(map_location, str | torch.device) else "cpu"
        model = load_model_from_checkpoint(checkpoint_path, device)
        if not isinstance(model, cls):
            raise GenbenchError(
                f"{checkpoint_path} is a checkpoint of a {model.family}, not of a {cls.__name__}: load it with "
                f"{type(model).__name__}.load_from_checkpoint or genbench.api.load."
            )
        return model

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.image_size, self.image_size)

    # --- class conditioning ------------------------------------------------------------------
    @property
    def conditional(self) -> bool:
        """Whether the model can be asked for a class (``model.conditional=true``)."""
        return self.num_classes is not None

    def enable_conditioning(
        self, conditional: bool, num_classes: int | None, networks: dict[str, torch.nn.Module] | None = None
    ) -> int | None:
        """Make the model class-conditional with ``num_classes`` classes when ``conditional`` (a
        family's constructor calls it before building its class embeddings); returns the class
        count, or None for an unconditional model. ``networks`` (config key -> network) must have been
        built for the same class count (their ``num_classes`` attribute): a network built for other
        classes than its model is one clear line here, not a shape error in the first step."""
        if not conditional:
            self.num_classes = None
        elif num_classes is None or int(num_classes) < 2:
            raise GenbenchError(
                f"model.conditional=true needs at least 2 classes, got num_classes={num_classes}: use labelled data "
                "(data.num_classes, e.g. fashion_mnist's 10) or set model.conditional=false."
            )
        else:
            self.num_classes = int(num_classes)
        for name, net in (networks or {}).items():
            net_classes = getattr(net, "num_classes", None)
            if net_classes != self.num_classes:
                kind = f"conditional with {self.num_classes} classes" if self.conditional else "unconditional"
                raise GenbenchError(
                    f"The {self.family} is {kind} but model.{name} has num_classes={net_classes}: leave "
                    f"model.{name}.num_classes at its default in conf/model/{self.family}.yaml, which follows "
                    "model.conditional and model.num_classes."
                )
        return self.num_classes

    def class_labels(self, n: int, labels: Any = None) -> torch.Tensor | None:
        """The ``n`` classes ``sample(n, labels=...)`` asks for, as a CPU long tensor: ``labels`` may be
        one class for all, or a sequence/tensor of ``n``. None for an unconditional model; a
        conditional model asked for nothing gets the classes in turn (a class-balanced sample)."""
        if self.num_classes is None:
            if labels is not None:
                raise GenbenchError(
                    f"This {self.family} is unconditional and cannot be asked for classes: train it with "
                    "model.conditional=true, or sample without labels."
                )
            return None
        if labels is None:
            return torch.arange(n) % self.num_classes
        if isinstance(labels, int):
            labels = torch.full((n,), labels, dtype=torch.long)
        labels = torch.as_tensor(labels).detach().to("cpu")
        if labels.ndim != 1 or len(labels) != n or labels.is_floating_point():
            raise GenbenchError(
                f"sample(n={n}, labels=...) needs one integer class or {n} of them, got {labels.dtype} of shape {tuple(labels.shape)}."
            )
        if len(labels) and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise GenbenchError(
                f"Classes must lie in 0..{self.num_classes - 1} for this {self.family}, got {labels.min()}..{labels.max()}."
            )
        return labels.long()

    # --- the sampling contract ---------------------------------------------------------------
    def _sample_batch(self, n: int, generator: torch.Generator | None, **kwargs: Any) -> torch.Tensor:
        """Draw n images (any float dtype, roughly in [-1, 1]) with gradients off and eval mode on.
        Every family implements it; ``sample()`` is the contract callers use. A conditional model
        also receives ``labels=`` (the chunk's classes, a long tensor on the module's device)."""
        raise NotImplementedError(f"{type(self).__name__} must implement _sample_batch(n, generator).")

    def sample(
        self, n: int, generator: torch.Generator | None = None, labels: Any = None, **kwargs: Any
    ) -> torch.Tensor:
        """Draw ``n`` images in [-1, 1], in chunks of ``sample_batch_size``, leaving the module's
        train/eval mode as it found it. Randomness comes from ``generator`` when given, so a fixed
        generator gives the same images on every call. ``labels`` asks a conditional model for
        classes (one for all, or one per image; see :meth:`class_labels`).

        The networks run under ``torch.inference_mode`` (no autograd graph, no version counters);
        the chunks are joined outside it, so callers get an ordinary tensor they may modify in place."""
        if n < 1:
            raise GenbenchError(f"sample(n) needs n >= 1, got {n}.")
        classes = self.class_labels(n, labels)

        def chunk(start: int, b: int) -> torch.Tensor:
            if classes is not None:
                kwargs["labels"] = classes[start : start + b].to(self.device)
            return self._sample_batch(b, generator, **kwargs)

        with torch.inference_mode():
            chunks = self._in_chunks(n, chunk)
        return torch.cat(chunks)

    def _in_chunks(self, n: int, make: Callable[[int, int], torch.Tensor]) -> list[torch.Tensor]:
        """``make(start, b)`` for chunks of ``sample_batch_size`` covering ``n`` images, in eval mode
        (the module's mode is restored afterwards), each clamped to [-1, 1] as float, with a stop
        request honoured between chunks: what ``sample()`` and ``decode_latents()`` share."""
        was_training = self.training
        self.eval()
        try:
            chunks = []
            for start in range(0, n, self.sample_batch_size):
                check_stop()
                b = min(self.sample_batch_size, n - start)
                chunks.append(make(start, b).float().clamp(-1, 1))
        finally:
            self.train(was_training)
        return chunks

    # --- latents: what interpolation grids walk through (genbench.latents) -------------------
    @property
    def latent_shape(self) -> tuple[int, ...]:
        """The shape of one latent the family decodes deterministically: z for a family with a
        generator or a decoder, x_T for a diffusion model (decoded by DDIM with eta=0)."""
        raise NotImplementedError(f"{type(self).__name__} must define latent_shape.")

    def _decode_batch(self, z: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """Latents -> images, deterministically (no randomness besides ``z``)."""
        raise NotImplementedError(f"{type(self).__name__} must implement _decode_batch(z).")

    @torch.no_grad()
    def decode_latents(self, z: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """Decode latents shaped ``(n, *latent_shape)`` into ``n`` images in [-1, 1], in chunks of
        ``sample_batch_size`` and in eval mode, like ``sample()``. The map is deterministic, so the
        same ``z`` always gives the same image: what makes an interpolation between two latents
        (and a grid's endpoints) meaningful."""
        if tuple(z.shape[1:]) != tuple(self.latent_shape):
            raise GenbenchError(
                f"decode_latents needs latents shaped (n, {', '.join(map(str, self.latent_shape))}), "
                f"got {tuple(z.shape)}."
            )
        return torch.cat(
            self._in_chunks(len(z), lambda start, b: self._decode_batch(z[start : start + b].to(self.device), **kwargs))
        )

    def randn(self, *shape: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Standard normal noise drawn on the generator's device, then moved to the module's: a
        CPU generator gives the same samples whatever device the model runs on."""
        return randn(shape, generator, device=self.device)

    # --- speed options -------------------------------------------------------------------------
    def trained_networks(self) -> dict[str, torch.nn.Module]:
        """The child modules an optimiser trains (e.g. generator + discriminator, encoder +
        decoder, or a net but not its frozen EMA copy): what ``model.compile`` compiles."""
        return {
            name: child for name, child in self.named_children() if any(p.requires_grad for p in child.parameters())
        }

    def apply_speed_options(self, device: torch.device | None = None) -> None:
        """Apply ``model.channels_last`` and ``model.compile`` (once, for ``device``: ``auto`` means
        channels_last on a CPU only). channels_last converts every
        child's 4-D weights (the EMA copy too, so its update and sampling stay in one layout)
        except, on a GPU, ``channels_last_exempt_on_gpu``; compile uses ``nn.Module.compile``, which
        compiles in place and keeps the state-dict keys, so checkpoints load with or without it."""
        if self._speed_applied:
            return
        self._speed_applied = True
        device = device if device is not None else self.device
        auto_on = device.type == "cpu" or (device.type == "cuda" and self.channels_last_auto_on_gpu)
        if self.channels_last is True or (self.channels_last == "auto" and auto_on):
            exempt = self.channels_last_exempt_on_gpu if device.type == "cuda" else ()
            for name, child in self.named_children():
                if name not in exempt and any(p.ndim == 4 for p in child.parameters()):
                    child.to(memory_format=torch.channels_last)
                    # inputs in the same layout (batches, fakes, x_t): a no-op for 1-channel images
                    child.register_forward_pre_hook(_channels_last_inputs)
        if self.compile_kwargs is not None:
            eager = transposed_conv_networks(self.trained_networks()) if device.type == "cuda" else []
            if eager:
                log.warning(
                    "model.compile: %s left eager on the GPU: they hold transposed convolutions, whose backward "
                    "Inductor compiles with a wrong stride check on CUDA (pytorch/pytorch#171622; it crashed the "
                    "first training step of a transposed-convolution decoder on an H100 and of such a generator on an "
                    "H200, "
                    "torch 2.11). Compiling them gave no speed-up there anyway (docs/performance.md).",
                    ", ".join(eager),
                )
            for name, net in self.trained_networks().items():
                if name not in eager:
                    net.compile(**self.compile_kwargs)

    def configure_model(self) -> None:
        # Lightning calls this once per fit/validate, before the strategy moves the model to its device.
        self.apply_speed_options(self.trainer.strategy.root_device if self._trainer is not None else None)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Compilation happens lazily in the first step: its cost = first step - second step.
        if self.compile_kwargs is None or self.compile_seconds is not None:
            return
        self._step_clock.append(time.perf_counter())
        if len(self._step_clock) == 3:
            t0, t1, t2 = self._step_clock
            self.compile_seconds = max(0.0, (t1 - t0) - (t2 - t1))
            log.info(
                "torch.compile %s: first training step %.1f s (compilation included), second %.3f s: "
                "compile time about %.1f s.",
                self.compile_kwargs or "(defaults)",
                t1 - t0,
                t2 - t1,
                self.compile_seconds,
            )

    # --- per-step logging -----------------------------------------------------------------------
    def logs_this_step(self) -> bool:
        """Whether this training step's ``self.log`` values can reach anyone: the loggers write
        only every ``trainer.log_every_n_steps`` steps (and when the run stops), and an on-step
        value logged in between is overwritten unread. Each ``self.log`` call costs Lightning
        bookkeeping (``_ResultCollection.log`` re-walks the stored metric with
        ``apply_to_collection``, ~1 ms per value on our CPU: 2-3 % of an encoder-decoder
        step), so the families log only on the steps that are written, the last batch of an epoch and
        the last steps of a ``max_steps`` run (``train/loss`` in metrics.json stays the final one). The
        progress bar's training values then refresh every ``log_every_n_steps`` steps. Reads
        Lightning's own decision (``_logger_connector.should_update_logs``); if a Lightning
        version lacks it, every step logs (correct, only slower)."""
        trainer = self._trainer
        if trainer is None or trainer.fast_dev_run or trainer.log_every_n_steps <= 1:
            return True
        try:
            if trainer._logger_connector.should_update_logs:
                return True
            last_batch = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        except AttributeError:
            return True
        # +2: a batch of a family with two optimizers (manual optimisation) makes up to two optimiser
        # steps; logging one step too many is harmless
        return bool(last_batch) or 0 < trainer.max_steps <= trainer.global_step + 2

    # --- shared plumbing ----------------------------------------------------------------------
    def on_fit_start(self) -> None:
        # seed_everything gives every DDP rank the same seed, which is right for initialisation
        # (identical replicas) but wrong for training noise: ranks would draw the same z, t and
        # eps and waste half the batch. Offset the stream by rank once the replicas exist.
        if self.trainer.world_size > 1:
            torch.manual_seed((torch.initial_seed() + 1_000_003 * self.global_rank) % 2**63)

    @staticmethod
    def build_optimizer(
        factory: OptimizerFactory, scheduler: SchedulerFactory, params: Any
    ) -> dict[str, Any] | torch.optim.Optimizer:
        opt = factory(params=params)
        if scheduler is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler(optimizer=opt), "interval": "epoch"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["genbench"] = {"family": self.family, "version": __version__, "config": self.genbench_config}

    def num_parameters(self) -> int:
        """Trainable parameters (a family's EMA copy and fixed buffers are not counted)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
